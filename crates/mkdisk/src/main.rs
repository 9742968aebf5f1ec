//! The `mkdisk` command line: `mkdisk plan SPEC` and `mkdisk build SPEC --out DIR`.

use std::io::{IsTerminal, Write};
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
    /// Print where every partition goes and what it holds (`--json`: the plan's report).
    Plan {
        /// The layout: disko.devices JSON, or the minimal JSON/TOML form.
        spec: PathBuf,
        /// Print JSON (schema version 1, see the README) instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        content: Box<ContentArgs>,
    },
    /// Write `<imageName>.raw` (or --format's file) for every disk of the layout into --out.
    Build {
        /// The layout: disko.devices JSON, or the minimal JSON/TOML form.
        spec: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// What each disk becomes: raw (sparse), raw.zst, raw.gz (parallel streams that
        /// decompress to the raw image), qcow2 (v3), vhd (fixed, MiB-aligned, for Azure).
        #[arg(long, value_name = "FORMAT", default_value = "raw", value_parser = parse_format)]
        format: mkdisk::OutputFormat,
        /// Also write `<imageName>.raw.bmap` (bmaptool 2.0) for `bmaptool copy`.
        #[arg(long)]
        bmap: bool,
        /// No progress bar or warnings.
        #[arg(long, short)]
        quiet: bool,
        #[command(flatten)]
        content: Box<ContentArgs>,
    },
}

/// What goes into the image, for `plan` and `build` alike.
#[derive(clap::Args)]
struct ContentArgs {
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
    /// Every disk's size, instead of the layout's imageSize: SIZE ([0-9]+[KMGTP], e.g. 25G;
    /// the partition that fills the disk grows, the file stays sparse), or `auto`: the fixed
    /// partitions keep their sizes and the one that fills the disk (size 100%) gets the
    /// smallest size its filesystem holds the content in, plus --headroom, rounded up to its
    /// alignment (1 MiB); the image ends after it and the backup GPT.
    #[arg(long, value_name = "auto|SIZE", value_parser = parse_image_size)]
    image_size: Option<mkdisk::ImageSize>,
    /// Room an auto-sized partition gets on top of its content's minimal size: a
    /// percentage of that size, a size, or both (`10%`, `256M`, `10%+256M`). Default
    /// 10%+64M: room to boot, log and update, in proportion to the content.
    #[arg(long, value_name = "P%+SIZE", value_parser = parse_headroom)]
    headroom: Option<mkdisk::Headroom>,
    #[command(flatten)]
    nixos: NixosArgs,
}

impl ContentArgs {
    fn options(self, out: PathBuf) -> anyhow::Result<BuildOptions> {
        let mut opts = BuildOptions::new(out);
        opts.root = self.root;
        opts.seed = seed_of(self.seed.as_deref());
        opts.threads = self.threads.or_else(threads_default);
        opts.keep_owner = self.keep_owner;
        opts.compress = self.compress;
        opts.image_size = self.image_size;
        opts.headroom = self.headroom.unwrap_or_default();
        opts.source_date_epoch = source_date_epoch()?;
        opts.nixos = self.nixos.into_options()?;
        Ok(opts)
    }
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
    /// /etc/NIXOS and boot loaders. Without --systemd-boot, --grub or --grub-efi, systemd-boot
    /// goes on the ESP when the bootspec carries org.nixos.systemd-boot, and nothing else.
    #[arg(long, value_name = "TOPLEVEL")]
    system: Option<String>,
    /// Install systemd-boot on the ESP: FILE (systemd-bootx64.efi), or without FILE the
    /// toplevel's systemd's.
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    #[allow(clippy::option_option)] // absent, given without FILE, given with FILE
    systemd_boot: Option<Option<PathBuf>>,
    /// systemd-boot's console-mode (default keep).
    #[arg(long, value_name = "MODE")]
    systemd_boot_console_mode: Option<String>,
    /// Turn systemd-boot's boot entry editor off (`editor 0`).
    #[arg(long)]
    no_systemd_boot_editor: bool,
    /// GRUB's lib/grub directory (e.g. ${grub2}/lib/grub, /usr/lib/grub), holding i386-pc/
    /// and/or x86_64-efi/; may be given twice. With i386-pc/: GRUB for BIOS on every disk
    /// with a BIOS boot partition (EF02), or those of --grub-disk; mkdisk assembles core.img.
    #[arg(long, value_name = "DIR")]
    grub: Vec<PathBuf>,
    /// Disk (layout name) that gets GRUB for BIOS; may be repeated.
    #[arg(long, value_name = "NAME")]
    grub_disk: Vec<String>,
    /// Install GRUB for EFI on the ESP (EFI/BOOT/BOOTX64.EFI), made by the grub-mkimage
    /// of the --grub package that holds x86_64-efi/.
    #[arg(long)]
    grub_efi: bool,
    /// Install GRUB for EFI as EFI/ID/grubx64.efi instead (needs a firmware boot entry).
    #[arg(long, value_name = "ID")]
    grub_efi_id: Option<String>,
    /// File whose text goes into grub.cfg after its settings (boot.loader.grub.extraConfig).
    #[arg(long, value_name = "FILE")]
    grub_extra_config: Option<PathBuf>,
    /// File of menu entries for grub.cfg (boot.loader.grub.extraEntries).
    #[arg(long, value_name = "FILE")]
    grub_extra_entries: Option<PathBuf>,
    /// Install no boot loader.
    #[arg(long)]
    no_bootloader: bool,
    /// Boot menu timeout in seconds (default 5).
    #[arg(long, value_name = "SECONDS")]
    boot_timeout: Option<u32>,
    /// GRUB terminal on the serial port too.
    #[arg(long)]
    grub_serial: bool,
    /// The image's architecture (x86_64, aarch64, riscv64): boot loader names (BOOTAA64.EFI,
    /// systemd-bootaa64.efi), GRUB's EFI platform (arm64-efi), PE checks. Default: the
    /// --system toplevel's bootspec `system`, else the host's; a disagreeing bootspec is an error.
    #[arg(long, value_name = "ARCH", value_parser = parse_arch)]
    arch: Option<mkdisk::Arch>,
}

impl NixosArgs {
    fn into_options(self) -> anyhow::Result<mkdisk::NixosOptions> {
        let text = |p: Option<PathBuf>| {
            p.map(|p| std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))).transpose()
        };
        let mut o = mkdisk::NixosOptions::default();
        o.closure = self.closure;
        o.store_dir = self.store_dir;
        o.system = self.system;
        o.systemd_boot =
            self.systemd_boot.map(|f| f.map_or(mkdisk::SystemdBoot::FromToplevel, mkdisk::SystemdBoot::File));
        o.systemd_boot_console_mode = self.systemd_boot_console_mode;
        o.systemd_boot_no_editor = self.no_systemd_boot_editor;
        o.grub = self.grub;
        o.grub_disks = self.grub_disk;
        o.grub_efi = self.grub_efi || self.grub_efi_id.is_some();
        o.grub_efi_id = self.grub_efi_id;
        o.grub_extra_config = text(self.grub_extra_config).context("--grub-extra-config")?;
        o.grub_extra_entries = text(self.grub_extra_entries).context("--grub-extra-entries")?;
        o.no_bootloader = self.no_bootloader;
        o.boot_timeout = self.boot_timeout;
        o.grub_serial = self.grub_serial;
        o.arch = self.arch;
        Ok(o)
    }
}

/// The progress bar: the phase as its label, bytes of file data written, and an estimate of
/// the time left only once it means something (a few seconds in, a tenth of the data done).
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new(show: bool) -> Bar {
        let bar = indicatif::ProgressBar::hidden();
        if show {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            let style = indicatif::ProgressStyle::with_template(
                "{prefix:>9} {spinner} {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} {wide_bar} {late_eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .with_key("late_eta", |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                if let Some(text) = late_eta(s.elapsed(), s.fraction(), s.eta()) {
                    let _ = w.write_str(&text);
                }
            });
            bar.set_style(style);
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
        }
        Bar(bar)
    }
}

/// The time left, once it means something: three seconds in and a tenth of the data done
/// (before that, rates from the first chunks promise "85m" for a build of a second).
fn late_eta(elapsed: std::time::Duration, fraction: f32, eta: std::time::Duration) -> Option<String> {
    let started = elapsed >= std::time::Duration::from_secs(3) && fraction >= 0.1;
    (started && fraction < 1.0).then(|| format!("{}s left", eta.as_secs()))
}

impl Progress for Bar {
    fn data_written(&self, bytes: u64) {
        self.0.inc(bytes);
    }

    fn set_total(&self, bytes: u64) {
        self.0.set_length(bytes);
    }

    fn phase(&self, what: &str) {
        self.0.set_prefix(what.to_string());
    }
}

fn read_spec(path: &PathBuf) -> anyhow::Result<Spec> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8(text).map_err(|e| {
        anyhow::anyhow!("{}: not UTF-8 text (invalid byte at offset {})", path.display(), e.utf8_error().valid_up_to())
    })?;
    Spec::parse(&text).with_context(|| format!("{}", path.display()))
}

fn parse_arch(s: &str) -> Result<mkdisk::Arch, String> {
    mkdisk::Arch::parse(s).ok_or_else(|| format!("unknown architecture {s:?} (known: x86_64, aarch64, riscv64)"))
}

fn parse_format(s: &str) -> Result<mkdisk::OutputFormat, String> {
    s.parse()
}

fn parse_image_size(s: &str) -> Result<mkdisk::ImageSize, String> {
    s.parse()
}

fn parse_headroom(s: &str) -> Result<mkdisk::Headroom, String> {
    s.parse()
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

/// `mkdisk plan`: a table per disk.
fn plan_table(report: &mkdisk::Report) -> Result<String, std::fmt::Error> {
    use std::fmt::Write as _;
    let mut text = String::new();
    for d in &report.disks {
        writeln!(text, "disk {} → {}: {} sectors, GUID {}", d.name, d.image, d.sectors, d.guid)?;
        let head = ["#", "label", "start", "end", "size", "type", "guid"];
        writeln!(
            text,
            "  {:>2}  {:<20} {:>10} {:>10} {:>10}  {:<6} {:<36}  fs",
            head[0], head[1], head[2], head[3], head[4], head[5], head[6]
        )?;
        for p in &d.partitions {
            let code = p.type_code.clone().unwrap_or_else(|| p.type_guid.to_lowercase());
            writeln!(
                text,
                "  {:>2}  {:<20} {:>10} {:>10} {:>10}  {:<6} {:<36}  {}",
                p.number, p.label, p.start, p.end, p.size, code, p.guid, p.filesystem
            )?;
        }
    }
    Ok(text)
}

/// Write to stdout; a reader that went away (`mkdisk plan | head`) is not an error.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(anyhow::Error::new(e).context("writing to stdout")),
        _ => Ok(()),
    }
}

fn plan(spec: &PathBuf, json: bool, content: ContentArgs) -> anyhow::Result<()> {
    let s = read_spec(spec)?;
    let mut opts = content.options(std::env::temp_dir())?;
    opts.measure = opts.root.is_some() || opts.nixos.any();
    let plan = mkdisk::plan(&s, &opts, &mkdisk::NoProgress).with_context(|| format!("{}", spec.display()))?;
    let report = plan.report();
    print_stdout(&if json { serde_json::to_string_pretty(&report)? + "\n" } else { plan_table(&report)? })
}

/// Phase durations on stderr when `MKDISK_TIMINGS` is set (for profiling; never in output).
fn print_timings(timings: &[(String, std::time::Duration)]) {
    if std::env::var_os("MKDISK_TIMINGS").is_some() {
        for (what, d) in timings {
            eprintln!("mkdisk: {what}: {:.3} s", d.as_secs_f64());
        }
    }
}

fn build(spec: &PathBuf, opts: &BuildOptions, quiet: bool) -> anyhow::Result<()> {
    let s = read_spec(spec)?;
    let bar = Bar::new(!quiet && std::io::stderr().is_terminal());
    let written = mkdisk::plan(&s, opts, &bar).and_then(|plan| {
        print_timings(plan.timings());
        if !quiet {
            for m in plan.warnings() {
                bar.0.suspend(|| eprintln!("mkdisk: warning: {}", escape_controls(m)));
            }
        }
        plan.write(&bar)
    });
    bar.0.finish_and_clear();
    let written = written.with_context(|| format!("{}", spec.display()))?;
    print_timings(&written.timings);
    if !quiet {
        for p in written.images {
            eprintln!("mkdisk: wrote {}", escape_controls(&p.display().to_string()));
        }
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Plan { spec, json, content } => plan(&spec, json, *content),
        Command::Build { spec, out, quiet, format, bmap, content } => {
            let mut opts = content.options(out)?;
            opts.format = format;
            opts.bmap = bmap;
            build(&spec, &opts, quiet)
        }
    }
}

/// Control characters (a newline in a file name, an escape sequence) printed as `\n`,
/// `\x1b`, so that a message stays one line and cannot drive the terminal.
fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out
}

/// The error and its causes on one line, each cause once: a library error that already
/// renders its source is not followed by that source again.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    escape_controls(&line)
}

/// A command-line error on one line: clap's first line and the usage.
fn usage_error(e: &clap::Error) -> String {
    let text = e.render().to_string();
    // The message is the first paragraph (a list of missing arguments follows its colon).
    let first: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
    let first = first.join(" ");
    let first = first.trim_start_matches("error: ");
    let usage = text.lines().find_map(|l| l.strip_prefix("Usage: ")).unwrap_or("mkdisk --help");
    format!("mkdisk: error: {first} (usage: {}; see --help)", usage.trim())
}

/// On SIGINT, SIGTERM or SIGHUP: remove the named files of the unfinished build (unnamed
/// ones need nothing) and exit with 128 + the signal number, as a shell reports it.
fn remove_output_on_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    if let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                mkdisk_tree::remove_temp_files();
                std::process::exit(128 + sig);
            }
        });
    }
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit codes: 0 success, 1 any error (bad input, a failed build, a malformed command
/// line); `--help` and `--version` exit 0.
fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{}", usage_error(&e));
            return ExitCode::from(1);
        }
    };
    remove_output_on_signals();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mkdisk: error: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn eta_shows_only_once_it_means_something() {
        let s = Duration::from_secs;
        assert_eq!(late_eta(Duration::from_millis(100), 0.02, s(5100)), None);
        assert_eq!(late_eta(s(10), 0.05, s(190)), None);
        assert_eq!(late_eta(s(2), 0.5, s(2)), None);
        assert_eq!(late_eta(s(4), 0.25, s(12)), Some("12s left".into()));
        assert_eq!(late_eta(s(9), 1.0, s(0)), None);
    }

    #[test]
    fn messages_are_one_line_and_say_each_cause_once() {
        let io = std::io::Error::from_raw_os_error(36);
        let e = anyhow::Error::new(io).context("a/b\nc: File name too long (os error 36)").context("layout.json");
        assert_eq!(one_line(&e), "layout.json: a/b\\nc: File name too long (os error 36)");
        assert_eq!(escape_controls("x\ty\u{1b}[0m"), "x\\ty\\u{1b}[0m");
    }
}
