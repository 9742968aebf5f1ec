//! The `mkdisk` command line: `mkdisk plan SPEC` and `mkdisk build SPEC --out DIR`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mkdisk::{BuildOptions, Spec};
use mkdisk_tree::Progress;

#[derive(Parser)]
#[command(
    name = "mkdisk",
    version,
    about = "Write bootable, reproducible disk images from a disko layout — no root, no VM"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print where every partition goes.
    Plan {
        /// The layout: disko.devices JSON, or the minimal JSON/TOML form.
        spec: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Seed for GUIDs the layout leaves open (a UUID, or any string).
        #[arg(long)]
        seed: Option<String>,
    },
    /// Write `<imageName>.raw` for every disk of the layout into --out.
    Build {
        /// The layout: disko.devices JSON, or the minimal JSON/TOML form.
        spec: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Source tree, split by the layout's mount points.
        #[arg(long)]
        root: Option<PathBuf>,
        /// Seed for every identifier (a UUID, or any string). Default: a fixed constant.
        #[arg(long)]
        seed: Option<String>,
        /// Worker threads (default: $NIX_BUILD_CORES when set, else all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Keep source uid/gid (default: everything root:root).
        #[arg(long)]
        keep_owner: bool,
        /// Default btrfs compression, `zstd[:LEVEL]`, where the layout's mount options set none.
        #[arg(long, value_name = "zstd[:LEVEL]")]
        compress: Option<String>,
        /// No progress bar or warnings.
        #[arg(long, short)]
        quiet: bool,
        #[command(flatten)]
        nixos: Box<NixosArgs>,
    },
}

/// NixOS content (see `mkdisk::nixos`).
#[derive(clap::Args)]
struct NixosArgs {
    /// A closureInfo output (store-paths, registration): copy its store paths into
    /// /nix/store and write /nix/var/nix/db.
    #[arg(long, value_name = "DIR")]
    closure: Option<PathBuf>,
    /// Host directory holding the store paths (default /nix/store; for a chroot store
    /// `<root>/nix/store`).
    #[arg(long, value_name = "DIR")]
    store_dir: Option<PathBuf>,
    /// NixOS system toplevel (a /nix/store path with boot.json): system profile,
    /// /etc/NIXOS and boot loaders (systemd-boot on an ESP, GRUB on an EF02 partition).
    #[arg(long, value_name = "TOPLEVEL")]
    system: Option<String>,
    /// systemd-bootx64.efi to install (default: from the toplevel's systemd).
    #[arg(long, value_name = "FILE")]
    systemd_boot: Option<PathBuf>,
    /// Directory with GRUB's boot.img, a core.img built for this disk (grub-mkimage -O
    /// i386-pc with the prefix of /boot/grub) and i386-pc/ (*.mod, *.lst).
    #[arg(long, value_name = "DIR")]
    grub_bios_dir: Option<PathBuf>,
    /// Install no boot loader.
    #[arg(long)]
    no_bootloader: bool,
    /// Boot menu timeout in seconds (default 5).
    #[arg(long, value_name = "SECONDS")]
    boot_timeout: Option<u32>,
    /// GRUB terminal on the serial port too.
    #[arg(long)]
    grub_serial: bool,
}

impl NixosArgs {
    fn into_options(self) -> mkdisk::nixos::NixosOptions {
        mkdisk::nixos::NixosOptions {
            closure: self.closure,
            store_dir: self.store_dir,
            system: self.system,
            systemd_boot: self.systemd_boot,
            grub_bios_dir: self.grub_bios_dir,
            no_bootloader: self.no_bootloader,
            boot_timeout: self.boot_timeout,
            grub_serial: self.grub_serial,
        }
    }
}

struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn data_written(&self, bytes: u64) {
        self.0.inc(bytes);
    }

    fn set_total(&self, bytes: u64) {
        self.0.set_length(bytes);
    }
}

fn read_spec(path: &PathBuf) -> anyhow::Result<Spec> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Spec::parse(&text).with_context(|| format!("{}", path.display()))
}

fn seed_of(s: Option<&str>) -> uuid::Uuid {
    s.map_or(mkdisk_tree::ids::DEFAULT_SEED, mkdisk::parse_seed)
}

fn threads_default() -> Option<usize> {
    std::env::var("NIX_BUILD_CORES").ok().and_then(|v| v.parse::<usize>().ok()).filter(|&n| n > 0)
}

fn source_date_epoch() -> anyhow::Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => {
            Ok(Some(v.trim().parse().with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not an integer"))?))
        }
        _ => Ok(None),
    }
}

#[allow(clippy::print_stdout)]
fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Plan { spec, json, seed } => {
            let s = read_spec(&spec)?;
            let plans =
                mkdisk::place_all(&s, &seed_of(seed.as_deref())).with_context(|| format!("{}", spec.display()))?;
            if json {
                let disks: Vec<serde_json::Value> = plans
                    .iter()
                    .map(|dp| {
                        serde_json::json!({
                            "name": dp.disk.name,
                            "image": format!("{}.raw", dp.disk.image_name),
                            "sectors": dp.layout.sectors,
                            "guid": dp.layout.disk_guid.to_string(),
                            "partitions": dp.layout.partitions.iter().map(|p| serde_json::json!({
                                "number": p.number,
                                "name": p.name,
                                "label": p.label,
                                "start": p.first_lba,
                                "end": p.last_lba,
                                "size": p.sectors(),
                                "type": p.type_guid.to_string().to_uppercase(),
                                "guid": p.guid.to_string(),
                                "filesystem": mkdisk::build::describe(dp, p),
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "disks": disks }))?);
            } else {
                for dp in &plans {
                    println!(
                        "disk {} → {}.raw: {} sectors, GUID {}",
                        dp.disk.name, dp.disk.image_name, dp.layout.sectors, dp.layout.disk_guid
                    );
                    println!(
                        "  {:>2}  {:<20} {:>10} {:>10} {:>10}  {:<6} {:<36}  fs",
                        "#", "label", "start", "end", "size", "type", "guid"
                    );
                    for p in &dp.layout.partitions {
                        let code = mkdisk_gpt::types::type_code(&p.type_guid)
                            .map_or_else(|| p.type_guid.to_string(), str::to_string);
                        println!(
                            "  {:>2}  {:<20} {:>10} {:>10} {:>10}  {:<6} {:<36}  {}",
                            p.number,
                            p.label,
                            p.first_lba,
                            p.last_lba,
                            p.sectors(),
                            code,
                            p.guid,
                            mkdisk::build::describe(dp, p)
                        );
                    }
                }
            }
        }
        Command::Build { spec, out, root, seed, threads, keep_owner, compress, quiet, nixos } => {
            let s = read_spec(&spec)?;
            let mut opts = BuildOptions::new(out);
            opts.root = root;
            opts.seed = seed_of(seed.as_deref());
            opts.threads = threads.or_else(threads_default);
            opts.keep_owner = keep_owner;
            opts.compress = compress;
            opts.source_date_epoch = source_date_epoch()?;
            opts.nixos = (*nixos).into_options();
            let show = !quiet && std::io::stderr().is_terminal();
            let bar = indicatif::ProgressBar::hidden();
            if show {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{spinner} {bytes}/{total_bytes} {bytes_per_sec} {wide_bar} {eta}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
            }
            let progress = Bar(bar.clone());
            let mut warn = |m: String| {
                if !quiet {
                    bar.suspend(|| eprintln!("mkdisk: warning: {m}"));
                }
            };
            let paths =
                mkdisk::build(&s, &opts, &progress, &mut warn).with_context(|| format!("{}", spec.display()))?;
            bar.finish_and_clear();
            if !quiet {
                for p in paths {
                    eprintln!("mkdisk: wrote {}", p.display());
                }
            }
        }
    }
    Ok(())
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mkdisk: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
