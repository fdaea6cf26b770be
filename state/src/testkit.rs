//! Helpers for the state tests: a cluster that stamps commands with a moving clock.

use crate::{
    Command, DiskSpec, Event, NodeSpec, Rejection, RejectionKind, Replica, Request, State,
    Timestamp, VolumeSpec, apply,
};

pub const GIB: u64 = 1 << 30;

pub struct Cluster {
    pub state: State,
    pub clock: u64,
}

impl Cluster {
    pub fn new() -> Self {
        Self {
            state: State::default(),
            clock: 1_000_000,
        }
    }

    /// Applies `request` one second after the previous one.
    pub fn run(&mut self, request: Request) -> Result<Vec<Event>, Rejection> {
        self.clock += 1000;
        apply(
            &mut self.state,
            &Command::new(Timestamp(self.clock), "test", request),
        )
    }

    pub fn ok(&mut self, request: Request) -> Vec<Event> {
        match self.run(request.clone()) {
            Ok(events) => events,
            Err(rejection) => panic!("{request:?} was rejected: {rejection}"),
        }
    }

    /// Applies `request`, expects a rejection of `kind`, and returns its message.
    pub fn rejected(&mut self, request: Request, kind: RejectionKind) -> String {
        let before = self.state.encode();
        match self.run(request.clone()) {
            Ok(events) => panic!("{request:?} was accepted with {events:?}"),
            Err(rejection) => {
                assert_eq!(rejection.kind, kind, "{request:?}: {}", rejection.message);
                assert_eq!(before, self.state.encode(), "a rejection changed the state");
                rejection.message
            }
        }
    }

    /// Registers `id` in `zone` with one disk `d1` of `gib` GiB.
    pub fn node(&mut self, id: &str, zone: &str, gib: u64) {
        self.ok(Request::RegisterNode(NodeSpec {
            id: id.into(),
            address: format!("{id}:9500"),
            zone: zone.into(),
            disks: vec![disk("d1", gib)],
            ..Default::default()
        }));
    }

    pub fn volume(&mut self, name: &str, gib: u64, replicas: u8) -> Vec<Event> {
        self.ok(Request::CreateVolume(VolumeSpec {
            name: name.into(),
            size: gib * GIB,
            number_of_replicas: Some(replicas),
            ..Default::default()
        }))
    }

    pub fn set(&mut self, key: &str, value: &str) {
        self.ok(Request::SetSetting {
            key: key.into(),
            value: value.into(),
        });
    }

    /// Attaches `volume` on `node` and reports its engine serving.
    /// Nodes n1, n2 and n3 (100 GiB each) and volume "db" (1 GiB, 3 replicas) attached on n1.
    pub fn with_attached_db() -> Self {
        let mut c = Cluster::new();
        for n in ["n1", "n2", "n3"] {
            c.node(n, "", 100);
        }
        c.volume("db", 1, 3);
        c.attach("db", "n1");
        c
    }

    pub fn attach(&mut self, volume: &str, node: &str) {
        self.ok(Request::AttachVolume {
            name: volume.into(),
            node: node.into(),
            frontend: Default::default(),
        });
        let epoch = self.state.volumes[volume].epoch;
        self.ok(Request::ReportEngineStarted {
            name: volume.into(),
            epoch,
            endpoint: format!("nbd://{node}:10809/{volume}"),
            frontend: Default::default(),
            device: None,
        });
    }

    pub fn replicas(&self, volume: &str) -> Vec<Replica> {
        let volume = &self.state.volumes[volume];
        self.state.replicas_of(volume).cloned().collect()
    }

    /// The nodes holding `volume`'s replicas, sorted.
    pub fn nodes_of(&self, volume: &str) -> Vec<String> {
        let mut nodes: Vec<String> = self.replicas(volume).into_iter().map(|r| r.node).collect();
        nodes.sort();
        nodes
    }
}

pub fn disk(id: &str, gib: u64) -> DiskSpec {
    DiskSpec {
        id: id.into(),
        path: format!("/var/lib/shorthorn/{id}"),
        capacity: gib * GIB,
        ..Default::default()
    }
}
