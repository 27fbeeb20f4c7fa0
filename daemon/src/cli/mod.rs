//! The `settled` command line: daemon-side commands here, commands that talk to a running daemon in [`client`].

pub mod client;
pub mod table;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::{self, RunOptions};

/// settled: keeps your Lead -> Opportunity -> Quote -> Order -> Invoice -> Payment pipeline in one place, imports bank
/// statements and payment notices through connector plugins, and marks invoices paid by itself.
#[derive(Debug, Parser)]
#[command(name = "settled", version, propagate_version = true, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    client: client::ClientOpts,
    #[command(subcommand)]
    command: Command,
}

const AFTER_HELP: &str = "Start with `settled demo` to watch a lead become a paid invoice, or `settled init` then `settled run`.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (HTTP API, connector intake, file inbox, scheduler) until SIGTERM/SIGINT
    Run(RunArgs),
    /// Write a commented default config and a new API token (mode 0600) into the data directory
    Init {
        /// Overwrite an existing config
        #[arg(long)]
        force: bool,
    },
    /// Start a throwaway daemon with the bundled plugins and walk a lead all the way to a paid invoice, printing each step
    Demo(DemoArgs),
    /// Write every record of the store to FILE as JSON lines (the daemon must be stopped)
    Backup {
        /// Where to write the backup
        file: PathBuf,
        /// Config file
        #[arg(long, env = "SETTLED_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Load a backup into an empty data directory (the daemon must be stopped)
    Restore {
        /// The backup file
        file: PathBuf,
        /// Config file
        #[arg(long, env = "SETTLED_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check the store: recompute balances, counters and indexes and compare them with what the daemon serves
    ///
    /// Recomputes every invoice's amount paid, refunded and credited, balance and payment status from its
    /// allocations and credit notes and compares them with the invoice as the API serves it; checks that payments,
    /// allocations and customer credit agree with each other, that every number series is gap-free up to its counter
    /// and no id is above its counter, that every index row points at a record that still belongs there (and every
    /// such record is indexed), and that no outbox cursor is beyond the last event. It writes nothing.
    ///
    /// Run it after a crash or an unclean stop, after `settled restore`, after an upgrade, or whenever figures look
    /// wrong. With the daemon stopped it opens the data directory; while the daemon runs (it holds the data directory)
    /// it asks the daemon at --url, which runs the same checks while no write is in progress (or pass --online);
    /// the daemon's writes wait until the check is done.
    ///
    /// Prints one line per difference, naming the record, then a summary. Exit status: 0 no differences, 1
    /// differences found, 2 the check could not run (no store, store unreadable, daemon unreachable).
    Check {
        /// Config file (for the data directory and the number series patterns)
        #[arg(long, env = "SETTLED_CONFIG")]
        config: Option<PathBuf>,
        /// Ask the running daemon at --url even when the data directory is free
        #[arg(long)]
        online: bool,
    },
    /// Internal: serve one plugin library over stdin/stdout for process isolation
    #[command(hide = true)]
    PluginHost {
        /// Arguments for the plugin host
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    #[command(flatten)]
    Api(client::ApiCommand),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Config file [default: $SETTLED_CONFIG, else <data-dir>/settled.toml if present, else built-in defaults]
    #[arg(long, env = "SETTLED_CONFIG")]
    config: Option<PathBuf>,
    /// Address for the HTTP API and intake [default: 127.0.0.1:7878]
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Log one JSON object per line
    #[arg(long)]
    json_logs: bool,
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Keep the demo daemon running afterwards (until Ctrl-C) so you can poke at it with the CLI
    #[arg(long)]
    keep_running: bool,
    /// Where the demo keeps its data [default: a fresh temporary folder]
    #[arg(long)]
    demo_dir: Option<PathBuf>,
}

/// Parse the command line, run the command, map errors to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::PluginHost { args } = cli.command {
        return crate::plugin_host::child_main(args);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Check { config, online } = &cli.command {
        return runtime.block_on(check(&cli.client, config.clone(), *online));
    }
    let result = runtime.block_on(dispatch(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let data_dir = cli.client.data_dir.clone();
    match cli.command {
        Command::Run(args) => {
            app::run(RunOptions {
                config: args.config,
                data_dir,
                listen: args.listen,
                json_logs: args.json_logs,
            })
            .await
        }
        Command::Init { force } => app::init(data_dir, force),
        Command::Demo(args) => crate::demo::run(args.demo_dir, args.keep_running).await,
        Command::Backup { file, config } => app::backup(
            &RunOptions {
                config,
                data_dir,
                ..RunOptions::default()
            },
            &file,
        ),
        Command::Restore { file, config } => app::restore(
            &RunOptions {
                config,
                data_dir,
                ..RunOptions::default()
            },
            &file,
        ),
        Command::PluginHost { .. } | Command::Check { .. } => Ok(()),
        Command::Api(cmd) => client::execute(cmd, &cli.client).await,
    }
}

/// `settled check`: offline on the data directory, or online through the daemon when it holds the directory (or
/// `--online`). Exit 0 clean, 1 differences, 2 could not check.
async fn check(opts: &client::ClientOpts, config: Option<PathBuf>, online: bool) -> ExitCode {
    let ask_daemon = || async {
        // Checking a store of millions of records takes minutes.
        let value =
            client::get_json(opts, "/v1/check", std::time::Duration::from_secs(3600)).await?;
        serde_json::from_value::<crate::check::Report>(value)
            .map_err(|e| anyhow::anyhow!("the daemon's check report does not decode: {e}"))
    };
    let result = if online {
        ask_daemon().await
    } else {
        let options = RunOptions {
            config,
            data_dir: opts.data_dir.clone(),
            ..RunOptions::default()
        };
        match app::load_config(&options).and_then(|c| crate::check::offline(&c)) {
            Err(e)
                if matches!(
                    e.downcast_ref::<crate::store::StoreError>(),
                    Some(crate::store::StoreError::Locked { .. })
                ) =>
            {
                eprintln!("{e:#}\nasking the running daemon at {} instead", opts.url);
                ask_daemon().await
            }
            other => other,
        }
    };
    match result {
        Ok(report) => {
            let mut out = std::io::stdout().lock();
            let printed = if opts.json {
                serde_json::to_writer_pretty(&mut out, &report)
                    .map_err(std::io::Error::other)
                    .and_then(|()| writeln!(out))
            } else {
                crate::check::print(&report, &mut out)
            };
            if let Err(e) = printed {
                eprintln!("error: writing the report: {e}");
                return ExitCode::from(2);
            }
            if report.differences.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
