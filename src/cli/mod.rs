//! The `rsgo` command line.

mod apikey;
mod apply;
mod delete;
mod get;
mod hook;
mod serve;

pub use apply::{Document, check_document, parse_documents};

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use kube::api::ObjectMeta;

use crate::model::{DEFAULT_ENVIRONMENT, DockerEndpoint, Environment, EnvironmentSpec};
use crate::store::{SqliteStore, Store};
use crate::{Error, Result};

/// rsgo: deploy container stacks from a versioned catalog, driven by CI webhooks and GitOps.
#[derive(Debug, Parser)]
#[command(name = "rsgo", version, about)]
pub struct Cli {
    /// Directory holding rsgo's database.
    #[arg(long, env = "RSGO_DATA_DIR", default_value = "./data", global = true)]
    pub data_dir: PathBuf,
    /// How log lines on stderr are written: `text` (colours only on a terminal) or `json` (one
    /// object per line, for log collectors).
    #[arg(
        long,
        value_enum,
        env = "RSGO_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// rsgo's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the hooks and run the reconciler.
    Serve(serve::ServeArgs),
    /// Create, list and revoke API keys.
    #[command(subcommand)]
    Apikey(apikey::ApikeyCommand),
    /// Create or update Environment, CatalogSource, Stack, ApiKey and Secret objects from YAML.
    Apply {
        /// File with one or more YAML documents (`-` reads standard input).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Show stacks, deployments, environments, catalog sources or secrets (never their values).
    Get {
        /// What to show.
        resource: get::Listable,
        /// Only this one.
        name: Option<String>,
        /// Output format; a table when absent.
        #[arg(short = 'o', long)]
        output: Option<Format>,
        /// Only this environment (stacks and deployments).
        #[arg(long)]
        environment: Option<String>,
    },
    /// Print the CustomResourceDefinitions of rsgo's kinds, or write one file per kind.
    Crd {
        /// Write `<plural>.rsgo.io.yaml` files into this directory instead of printing.
        #[arg(long)]
        output_dir: Option<PathBuf>,
    },
    /// Call a hook on a running rsgo (RSGO_URL, RSGO_API_KEY) and follow the rollout; exits
    /// non-zero when it is refused or the rollout fails.
    #[command(subcommand)]
    Hook(hook::HookCommand),
    /// Show the audit trail, newest first: who created or revoked keys, called hooks, was refused.
    Audit {
        /// Most entries shown.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only entries of this actor (a key's display name, or `cli`).
        #[arg(long)]
        actor: Option<String>,
        /// Only actions starting with this, such as `apikey.` or `hook.redeploy`.
        #[arg(long)]
        action: Option<String>,
        /// Output format; a table when absent.
        #[arg(short = 'o', long)]
        output: Option<Format>,
    },
    /// Delete a stack: its containers and network go, its volumes stay.
    Delete {
        /// What to delete.
        resource: delete::Deletable,
        /// Name of the stack.
        name: String,
        /// Environment of the stack.
        #[arg(long, default_value = DEFAULT_ENVIRONMENT)]
        environment: String,
    },
}

/// Machine-readable output formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Crd { output_dir } => return write_crds(output_dir.as_deref()),
        Command::Serve(args) => return serve::serve(&cli.data_dir, args).await,
        Command::Hook(command) => return hook::run(command).await,
        _ => {}
    }
    let store = open_sqlite(&cli.data_dir).await?;
    match cli.command {
        Command::Serve(_) | Command::Crd { .. } | Command::Hook(_) => {
            unreachable!("handled above")
        }
        Command::Audit {
            limit,
            actor,
            action,
            output,
        } => {
            let query = crate::audit::Query {
                limit,
                actor,
                action,
            };
            get::audit(&store, &query, output).await
        }
        Command::Apikey(command) => apikey::run(&store, command).await,
        Command::Apply { file } => apply::apply(&store, &file).await,
        Command::Get {
            resource,
            name,
            output,
            environment,
        } => {
            get::get(
                &store,
                resource,
                name.as_deref(),
                environment.as_deref(),
                output,
            )
            .await
        }
        Command::Delete {
            resource,
            name,
            environment,
        } => delete::delete(&store, resource, &name, &environment).await,
    }
}

/// Every CRD as YAML, keyed by its file name `<plural>.rsgo.io.yaml`.
pub fn crd_files() -> Result<Vec<(String, String)>> {
    crate::model::crds()
        .into_iter()
        .map(|crd| {
            let yaml = serde_yaml_ng::to_string(&crd).map_err(|e| Error::Yaml {
                context: format!(
                    "printing CRD {}",
                    crd.metadata.name.clone().unwrap_or_default()
                ),
                source: e,
            })?;
            Ok((
                format!("{}.yaml", crd.metadata.name.unwrap_or_default()),
                yaml,
            ))
        })
        .collect()
}

fn write_crds(dir: Option<&std::path::Path>) -> Result<()> {
    for (file, yaml) in crd_files()? {
        match dir {
            Some(dir) => {
                let path = dir.join(&file);
                std::fs::write(&path, yaml)
                    .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
                eprintln!("wrote {}", path.display());
            }
            None => out(&format!("---\n{}", yaml.trim_end()))?,
        }
    }
    Ok(())
}

/// Opens the embedded store and makes sure the `local` environment exists.
pub(crate) async fn open_sqlite(data_dir: &std::path::Path) -> Result<Arc<dyn Store>> {
    Ok(open_sqlite_store(data_dir).await?.0)
}

/// Like [`open_sqlite`], also returning the concrete store for maintenance.
pub(crate) async fn open_sqlite_store(
    data_dir: &std::path::Path,
) -> Result<(Arc<dyn Store>, SqliteStore)> {
    let sqlite = SqliteStore::open(data_dir)?;
    let store: Arc<dyn Store> = Arc::new(sqlite.clone());
    ensure_default_environment(&store).await?;
    Ok((store, sqlite))
}

/// Creates the `local` environment (Docker at `DOCKER_HOST`, else the default socket) once.
async fn ensure_default_environment(store: &Arc<dyn Store>) -> Result<()> {
    if store
        .get::<Environment>("", DEFAULT_ENVIRONMENT)
        .await?
        .is_some()
    {
        return Ok(());
    }
    let host =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    let env = Environment {
        metadata: ObjectMeta {
            name: Some(DEFAULT_ENVIRONMENT.into()),
            ..Default::default()
        },
        spec: EnvironmentSpec {
            docker: Some(DockerEndpoint {
                host,
                ..Default::default()
            }),
            kubernetes: None,
        },
        status: None,
    };
    match store.create(&env).await {
        Ok(_) | Err(Error::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Prints a value as JSON or YAML on stdout.
fn print_as(value: &serde_json::Value, format: Format) -> Result<()> {
    let text = match format {
        Format::Json => {
            serde_json::to_string_pretty(value).map_err(|e| Error::json("printing", e))?
        }
        Format::Yaml => serde_yaml_ng::to_string(value).map_err(|e| Error::Yaml {
            context: "printing".into(),
            source: e,
        })?,
    };
    out(text.trim_end())
}

/// Writes a line to stdout. A reader that went away (`rsgo get ... | head`) ends the command
/// quietly: [`is_closed_pipe`] tells the caller.
fn out(line: &str) -> Result<()> {
    use std::io::Write;
    writeln!(std::io::stdout().lock(), "{line}").map_err(|e| Error::io("writing to stdout", e))
}

/// Whether an error only says that stdout's reader has gone away.
pub fn is_closed_pipe(error: &Error) -> bool {
    matches!(error, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
}
