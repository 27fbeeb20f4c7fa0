//! The `settled` command line: daemon-side commands here, commands that talk to a running daemon in [`client`].

pub mod client;
pub mod table;

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
        Command::PluginHost { .. } => Ok(()),
        Command::Api(cmd) => client::execute(cmd, &cli.client).await,
    }
}
