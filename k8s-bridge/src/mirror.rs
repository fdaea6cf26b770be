//! The mirror: while this manager's Raft member leads, it keeps the `shorthorn.io` objects
//! of one namespace equal to the log, and turns users' spec edits into commands.
//!
//! - One writer: only the leader writes, with server-side apply under one field manager,
//!   and only what differs from what the API server holds (watched per kind), so a new
//!   leader's resync writes nothing when the objects are current: no duplicates (object
//!   names follow from the log's names) and no flapping.
//! - Spec edits: an object whose `metadata.generation` is past `status.observedGeneration`
//!   and whose spec differs from the log's was edited by a user. Its edit becomes commands;
//!   a refused edit gets a `SpecApplied=False` condition and a Warning Event with the reason,
//!   then the log's spec is put back.
//! - Writes are bounded: at most `writes_per_second` (a burst after idle is spread out).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use shorthorn_consensus::Handle;
use shorthorn_state::{Command, State, Timestamp};
use tokio::sync::mpsc;

use crate::crd::{self, Condition, FIELD_MANAGER};
use crate::edits::requests_for;
use crate::project::{Kind, Projection, project};

/// The label on every object the mirror writes; it watches only those.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "shorthorn-manager");

#[derive(Debug, Clone)]
pub struct MirrorConfig {
    pub namespace: String,
    /// This manager's node name (the Events' reporting instance).
    pub node: String,
    pub writes_per_second: u32,
}

fn resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Node => ApiResource::erase::<crd::Node>(&()),
        Kind::Setting => ApiResource::erase::<crd::Setting>(&()),
        Kind::BackupTarget => ApiResource::erase::<crd::BackupTarget>(&()),
        Kind::Volume => ApiResource::erase::<crd::Volume>(&()),
        Kind::Replica => ApiResource::erase::<crd::Replica>(&()),
        Kind::Engine => ApiResource::erase::<crd::Engine>(&()),
        Kind::Snapshot => ApiResource::erase::<crd::Snapshot>(&()),
        Kind::Backup => ApiResource::erase::<crd::Backup>(&()),
        Kind::BackupVolume => ApiResource::erase::<crd::BackupVolume>(&()),
        Kind::RecurringJob => ApiResource::erase::<crd::RecurringJob>(&()),
    }
}

/// An object as the API server last showed it (or as our last write returned it).
#[derive(Debug, Clone)]
struct Current {
    spec: Value,
    status: Value,
    generation: i64,
    object: DynamicObject,
}

impl Current {
    fn of(object: DynamicObject) -> Current {
        Current {
            spec: object.data.get("spec").cloned().unwrap_or(Value::Null),
            status: object.data.get("status").cloned().unwrap_or(Value::Null),
            generation: object.metadata.generation.unwrap_or(0),
            object,
        }
    }

    fn observed_generation(&self) -> i64 {
        self.status
            .get("observedGeneration")
            .and_then(Value::as_i64)
            .unwrap_or(0)
    }
}

type Key = (Kind, String);

enum Watched {
    Event(Kind, Box<watcher::Event<DynamicObject>>),
    Failed(Kind, String),
}

/// Runs forever: mirrors while this member leads, idles otherwise.
pub async fn run(handle: Handle, client: Client, config: MirrorConfig) {
    loop {
        while handle.status().role != "Leader" {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tracing::info!(namespace = %config.namespace, "leading: mirroring the log into the shorthorn.io objects");
        let mut mirror = Mirror::new(handle.clone(), client.clone(), config.clone());
        if let Err(err) = mirror.lead().await {
            tracing::warn!("the mirror stopped: {err:#}; starting over");
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

struct Mirror {
    handle: Handle,
    client: Client,
    config: MirrorConfig,
    current: HashMap<Key, Current>,
    /// The outcome of the last edit of each object, shown as its `SpecApplied` condition.
    outcomes: HashMap<Key, Condition>,
    limiter: tokio::time::Interval,
    recorder: Recorder,
    /// Writes made, for the log line after each pass.
    writes: u64,
}

impl Mirror {
    fn new(handle: Handle, client: Client, config: MirrorConfig) -> Mirror {
        let period = Duration::from_secs(1) / config.writes_per_second.max(1);
        let mut limiter = tokio::time::interval(period);
        limiter.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.to_string(),
                instance: Some(config.node.clone()),
            },
        );
        Mirror {
            handle,
            client,
            config,
            current: HashMap::new(),
            outcomes: HashMap::new(),
            limiter,
            recorder,
            writes: 0,
        }
    }

    fn api(&self, kind: Kind) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.config.namespace, &resource(kind))
    }

    /// Mirrors until this member stops leading (Ok) or the API server fails us (Err).
    async fn lead(&mut self) -> anyhow::Result<()> {
        let (tx, mut rx) = mpsc::channel::<Watched>(1024);
        let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
        let mut watchers = Vec::new();
        for kind in Kind::ALL {
            let stream = watcher(self.api(kind), watcher::Config::default().labels(&selector));
            let tx = tx.clone();
            watchers.push(AbortOnDrop(tokio::spawn(async move {
                let mut stream = std::pin::pin!(stream);
                loop {
                    let item = match stream.try_next().await {
                        Ok(Some(event)) => Watched::Event(kind, Box::new(event)),
                        Ok(None) => return,
                        Err(err) => Watched::Failed(kind, err.to_string()),
                    };
                    if tx.send(item).await.is_err() {
                        return;
                    }
                }
            })));
        }
        drop(tx);
        // The initial listing of every kind, before anything is written.
        let mut initializing: HashMap<Kind, Vec<DynamicObject>> = HashMap::new();
        let mut ready = std::collections::HashSet::new();
        while ready.len() < Kind::ALL.len() {
            match rx.recv().await {
                Some(w) => self.take(w, &mut initializing, &mut ready),
                None => anyhow::bail!("the watches ended"),
            }
            if !self.leading() {
                return Ok(());
            }
        }
        tracing::info!(
            objects = self.current.len(),
            "mirror resynced from the API server"
        );
        let applied = self.handle.status().applied.unwrap_or(0);
        let mut log_events = std::pin::pin!(self.handle.subscribe(applied + 1));
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            if !self.leading() {
                tracing::info!("no longer leading: the mirror stops");
                return Ok(());
            }
            self.pass().await?;
            // Wait for the log, the objects or the clock; then let a burst settle.
            tokio::select! {
                w = rx.recv() => match w {
                    Some(w) => self.take(w, &mut initializing, &mut ready),
                    None => anyhow::bail!("the watches ended"),
                },
                e = log_events.next() => {
                    if let Some(Err(err)) = e {
                        tracing::debug!("log event stream: {err}; resubscribing");
                        let applied = self.handle.status().applied.unwrap_or(0);
                        log_events.set(self.handle.subscribe(applied + 1));
                    }
                }
                _ = tick.tick() => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            while let Ok(w) = rx.try_recv() {
                self.take(w, &mut initializing, &mut ready);
            }
        }
    }

    fn leading(&self) -> bool {
        self.handle.status().role == "Leader"
    }

    fn take(
        &mut self,
        watched: Watched,
        initializing: &mut HashMap<Kind, Vec<DynamicObject>>,
        ready: &mut std::collections::HashSet<Kind>,
    ) {
        let (kind, event) = match watched {
            Watched::Event(kind, event) => (kind, *event),
            Watched::Failed(kind, err) => {
                tracing::warn!(kind = kind.name(), "watch: {err} (retried)");
                return;
            }
        };
        match event {
            watcher::Event::Apply(obj) => {
                self.current
                    .insert((kind, obj.name_any()), Current::of(obj));
            }
            watcher::Event::Delete(obj) => {
                self.current.remove(&(kind, obj.name_any()));
            }
            watcher::Event::Init => {
                initializing.insert(kind, Vec::new());
            }
            watcher::Event::InitApply(obj) => initializing.entry(kind).or_default().push(obj),
            watcher::Event::InitDone => {
                self.current.retain(|(k, _), _| *k != kind);
                for obj in initializing.remove(&kind).unwrap_or_default() {
                    self.current
                        .insert((kind, obj.name_any()), Current::of(obj));
                }
                ready.insert(kind);
            }
        }
    }

    async fn state(&self) -> anyhow::Result<State> {
        Ok(self.handle.read(|s| s.clone()).await?)
    }

    /// One reconciliation: users' edits first, then every difference written.
    async fn pass(&mut self) -> anyhow::Result<()> {
        let mut state = self.state().await?;
        let mut projection = project(&state);
        if self.edits(&state, &projection).await? {
            state = self.state().await?;
            projection = project(&state);
        }
        let before = self.writes;
        self.write(&projection).await?;
        if self.writes > before {
            tracing::debug!(writes = self.writes - before, "mirror pass");
        }
        Ok(())
    }

    /// Turns pending edits into commands; true when any command was accepted.
    async fn edits(&mut self, state: &State, projection: &Projection) -> anyhow::Result<bool> {
        let edited: Vec<(Key, Current)> = self
            .current
            .iter()
            .filter(|(key, cur)| {
                cur.generation > cur.observed_generation()
                    && projection.get(key).is_some_and(|d| d.spec != cur.spec)
            })
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect();
        let mut accepted = false;
        for (key, cur) in edited {
            let (kind, name) = (key.0, key.1.as_str());
            let outcome = match requests_for(kind, name, &cur.spec, state) {
                Ok(requests) => self.propose_all(requests).await,
                Err(why) => Err(why),
            };
            let condition = match &outcome {
                Ok(()) => {
                    accepted = true;
                    tracing::info!(
                        kind = kind.name(),
                        name,
                        generation = cur.generation,
                        "spec edit applied to the log"
                    );
                    spec_applied(true, "Applied", "the edit is in the log", cur.generation)
                }
                Err(why) => {
                    tracing::info!(kind = kind.name(), name, reason = %why, "spec edit refused; the log's spec is put back");
                    let reference = cur.object.object_ref(&resource(kind));
                    let event = KubeEvent {
                        type_: EventType::Warning,
                        reason: "EditRefused".into(),
                        note: Some(truncate(why.clone(), 1000)),
                        action: "Edit".into(),
                        secondary: None,
                    };
                    if let Err(err) = self.recorder.publish(&event, &reference).await {
                        tracing::warn!(kind = kind.name(), name, "event not recorded: {err}");
                    }
                    spec_applied(false, "Refused", why, cur.generation)
                }
            };
            self.outcomes.insert(key, condition);
        }
        Ok(accepted)
    }

    async fn propose_all(&self, requests: Vec<shorthorn_state::Request>) -> Result<(), String> {
        for request in requests {
            let command = Command::new(now(), format!("k8s-bridge/{}", self.config.node), request);
            match self.handle.propose(command).await {
                Ok(_) => {}
                Err(shorthorn_consensus::Error::Rejected { message, .. }) => {
                    return Err(message);
                }
                Err(err) => return Err(format!("the log did not take the edit: {err}")),
            }
        }
        Ok(())
    }

    /// One server-side apply under the mirror's field manager, of the main resource or of
    /// its status subresource, within the write rate.
    async fn apply(
        &mut self,
        kind: Kind,
        name: &str,
        mut body: Value,
        status: bool,
    ) -> anyhow::Result<DynamicObject> {
        body["apiVersion"] = resource(kind).api_version.into();
        body["kind"] = kind.name().into();
        self.limiter.tick().await;
        let api = self.api(kind);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let written = if status {
            api.patch_status(name, &params, &Patch::Apply(&body)).await
        } else {
            api.patch(name, &params, &Patch::Apply(&body)).await
        };
        let what = if status { "the status of " } else { "" };
        let obj =
            written.map_err(|e| anyhow::anyhow!("applying {what}{} {name}: {e}", kind.name()))?;
        self.writes += 1;
        Ok(obj)
    }

    /// Writes every object whose spec or status differs, deletes objects the log lost.
    async fn write(&mut self, projection: &Projection) -> anyhow::Result<()> {
        for ((kind, name), desired) in projection {
            let key = (*kind, name.clone());
            let spec_differs = self
                .current
                .get(&key)
                .is_none_or(|c| c.spec != desired.spec);
            if spec_differs {
                let body = json!({
                    "metadata": {
                        "name": name,
                        "labels": { MANAGED_BY.0: MANAGED_BY.1 },
                    },
                    "spec": desired.spec,
                });
                let obj = self.apply(*kind, name, body, false).await?;
                self.current.insert(key.clone(), Current::of(obj));
            }
            let cur = &self.current[&key];
            let mut status = desired.status.clone();
            status["observedGeneration"] = cur.generation.into();
            status["conditions"] = match self.outcomes.get(&key) {
                Some(c) => json!([c]),
                None => json!([]),
            };
            if cur.status != status {
                let body = json!({ "metadata": { "name": name }, "status": status });
                let obj = self.apply(*kind, name, body, true).await?;
                self.current.insert(key, Current::of(obj));
            }
        }
        let gone: Vec<Key> = self
            .current
            .keys()
            .filter(|k| !projection.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.limiter.tick().await;
            match self
                .api(key.0)
                .delete(&key.1, &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => anyhow::bail!("deleting {} {}: {e}", key.0.name(), key.1),
            }
            self.writes += 1;
            self.current.remove(&key);
            self.outcomes.remove(&key);
        }
        Ok(())
    }
}

fn spec_applied(ok: bool, reason: &str, message: impl Into<String>, generation: i64) -> Condition {
    Condition {
        type_: "SpecApplied".into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: crate::project::rfc3339(now()),
        observed_generation: Some(generation),
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

fn now() -> Timestamp {
    Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    )
}

/// Aborts its task when dropped (the watches end with the mirror).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Objects of `kind` that are ours, by name (for tests and `shorthorn check`).
pub async fn list_names(
    client: &Client,
    namespace: &str,
    kind: Kind,
) -> kube::Result<BTreeMap<String, Value>> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource(kind));
    let list = api.list(&Default::default()).await?;
    Ok(list
        .items
        .into_iter()
        .map(|o| {
            (
                o.name_any(),
                Value::Object(o.data.as_object().cloned().unwrap_or_default()),
            )
        })
        .collect())
}
