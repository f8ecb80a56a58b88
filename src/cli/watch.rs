//! `bowline watch`: follow changes, one line per event, across node failures.

use clap::Args;
use futures::StreamExt;
use serde_json::json;

use super::output::{config_document, endpoint_document, service_document, OutputFormat};
use super::resources::{parse_selector, Kind};
use super::{status_line, Ctx};
use crate::client::watch::WatchItem;
use crate::proto::v1 as pb;
use crate::watch::events::kind_to_proto;
use crate::watch::WatchKind;

/// Flags of `bowline watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// service, endpoint, trafficpolicy, destinationpolicy, healthcheck (plurals accepted), or `all`.
    pub kind: String,
    /// One object's name (for endpoints, its id; config objects are named after their service).
    pub name: Option<String>,
    /// Only objects whose name starts with this prefix.
    #[arg(long, conflicts_with = "name")]
    pub prefix: Option<String>,
    /// Only objects of this service (endpoints of it, config objects for it).
    #[arg(short, long)]
    pub service: Option<String>,
    /// Namespace (all when omitted).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Label selector `k=v[,k2=v2]` (services and endpoints).
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Start from this revision (events with revision >= R) instead of listing the current state.
    #[arg(long)]
    pub from_revision: Option<u64>,
    /// Print progress notices (the revision reached while nothing changes).
    #[arg(long)]
    pub progress: bool,
}

fn kinds(kind: &str) -> anyhow::Result<Vec<i32>> {
    if kind.eq_ignore_ascii_case("all") {
        return Ok(Vec::new());
    }
    let kind: Kind = kind.parse().map_err(anyhow::Error::msg)?;
    let watch_kind = match kind {
        Kind::Service => WatchKind::Service,
        Kind::Endpoint => WatchKind::Endpoint,
        Kind::Config(k) => WatchKind::Config(k),
    };
    Ok(vec![kind_to_proto(watch_kind) as i32])
}

fn describe(event: &pb::Event) -> (String, String, serde_json::Value) {
    match &event.object {
        Some(pb::event::Object::Service(s)) => (
            "Service".into(),
            format!("{}/{}", s.namespace, s.name),
            service_document(s),
        ),
        Some(pb::event::Object::Endpoint(e)) => {
            let health = e
                .health
                .as_ref()
                .map_or("", |h| h.status.as_str())
                .to_string();
            (
                "Endpoint".into(),
                format!(
                    "{}/{}/{} {}:{} {health}",
                    e.namespace, e.service, e.id, e.address, e.port
                ),
                endpoint_document(e),
            )
        }
        Some(pb::event::Object::Config(c)) => {
            let doc = config_document(c);
            (
                doc["kind"].as_str().unwrap_or("Config").to_string(),
                format!("{}/{}", c.namespace, c.name),
                doc,
            )
        }
        None => ("?".into(), String::new(), serde_json::Value::Null),
    }
}

fn print_event(output: OutputFormat, event: &pb::Event, existing: bool) {
    let kind = if existing {
        "EXISTS"
    } else if event.r#type == pb::EventType::Delete as i32 {
        "DELETE"
    } else {
        "PUT"
    };
    let (object_kind, summary, doc) = describe(event);
    match output {
        OutputFormat::Table => println!(
            "{:<8} {kind:<7} {object_kind:<18} {summary}",
            event.revision
        ),
        OutputFormat::Json => println!(
            "{}",
            json!({"type": kind, "kind": object_kind, "revision": event.revision, "object": doc})
        ),
        OutputFormat::Yaml => {
            let value = json!({"type": kind, "kind": object_kind, "revision": event.revision, "object": doc});
            print!("---\n{}", serde_yaml::to_string(&value).unwrap_or_default());
        }
    }
}

/// Runs `bowline watch`.
pub async fn run(ctx: &Ctx, args: &WatchArgs) -> anyhow::Result<()> {
    let kinds = kinds(&args.kind)?;
    let single_endpoint =
        args.name.is_some() && args.kind.to_ascii_lowercase().starts_with("endpoint");
    let request = pb::WatchRequest {
        kinds,
        namespace: args.namespace.clone().unwrap_or_default(),
        service: match (&args.name, single_endpoint) {
            (Some(name), false) => name.clone(),
            _ => args.service.clone().unwrap_or_default(),
        },
        name_prefix: match (&args.name, single_endpoint) {
            (Some(name), true) => name.clone(),
            _ => args.prefix.clone().unwrap_or_default(),
        },
        label_selector: parse_selector(args.selector.as_deref())?,
        start_revision: args.from_revision,
        progress_interval_ms: 0,
    };
    let wanted = |event: &pb::Event| match (&event.object, single_endpoint, &args.name) {
        (Some(pb::event::Object::Endpoint(e)), true, Some(id)) => &e.id == id,
        _ => true,
    };
    let mut stream = ctx.client.watch(request);
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let item = tokio::select! {
            _ = &mut stop => return Ok(()),
            item = stream.next() => item,
        };
        match item {
            None => return Ok(()),
            Some(Err(status)) => anyhow::bail!("watch: {}", status_line(&status)),
            Some(Ok(WatchItem::Listing { revision, events })) => {
                for event in events.iter().filter(|e| wanted(e)) {
                    print_event(ctx.output, event, true);
                }
                eprintln!("# listed {} objects at revision {revision}; watching for changes (Ctrl-C stops)", events.len());
            }
            Some(Ok(WatchItem::Events(events))) => {
                for event in events.iter().filter(|e| wanted(e)) {
                    print_event(ctx.output, event, false);
                }
            }
            Some(Ok(WatchItem::Progress(revision))) => {
                if args.progress {
                    eprintln!("# progress: revision {revision}");
                }
            }
        }
    }
}
