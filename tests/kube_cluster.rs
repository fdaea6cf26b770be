//! Managers as the chart runs them (`manager --kubernetes`), against a real control plane
//! (tests/testkit/kube.rs): they find each other and bootstrap once through Leases, apply
//! the seed's default settings, and the Raft leader mirrors the log into the shorthorn.io
//! objects; spec edits made with kubectl become commands or show why they were refused; a
//! leader SIGKILLed mid-mirror leaves no object lost, duplicated or stale.

mod testkit;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::kube::{
    ControlPlane, KubeManagers, NAMESPACE, plane_with_crds, seed_default_settings,
};
use testkit::s3::S3Server;
use testkit::{text_of, write_random};

/// The names of the objects of `resource` in the namespace.
fn names(plane: &ControlPlane, resource: &str) -> Vec<String> {
    let out = plane.kubectl_ok(&["get", resource, "-n", NAMESPACE, "-o", "json"]);
    let list: Value = serde_json::from_str(&out).expect("list JSON");
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| text_of(&item["metadata"]["name"]))
        .collect()
}

fn object(plane: &ControlPlane, resource: &str, name: &str) -> Option<Value> {
    let (out, _) = plane.kubectl(&["get", resource, name, "-n", NAMESPACE, "-o", "json"]);
    out.map(|out| serde_json::from_str(&out).expect("object JSON"))
}

/// Polls until `done` holds for the object (3 minutes at most).
fn wait_object(
    plane: &ControlPlane,
    resource: &str,
    name: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let got = object(plane, resource, name);
        if let Some(got) = got.as_ref().filter(|o| done(o)) {
            return got.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{resource}/{name}: {what} not seen in 180 s; last: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `kubectl patch` of a volume's replica count, as a user edits it.
fn patch_replicas(plane: &ControlPlane, volume: &str, replicas: u32) {
    let patch = format!(r#"{{"spec":{{"numberOfReplicas":{replicas}}}}}"#);
    plane.kubectl_ok(&[
        "patch",
        "volumes.shorthorn.io",
        volume,
        "-n",
        NAMESPACE,
        "--type=merge",
        "-p",
        &patch,
    ]);
}

fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

#[test]
fn managers_bootstrap_once_through_leases_and_mirror_the_log_with_edits() {
    let Some(plane) = plane_with_crds() else {
        return;
    };
    // Three managers started at the same moment: exactly one may bootstrap.
    let managers = KubeManagers::start(&plane, 3, &seed_default_settings());
    let views = managers.wait_group(&[1, 2, 3], 3, 0);
    let ids: BTreeSet<String> = views.iter().map(|v| v["id"].to_string()).collect();
    assert_eq!(ids.len(), 3, "three distinct node ids: {views:?}");
    let bootstrap: Value = serde_json::from_str(&plane.kubectl_ok(&[
        "get",
        "lease",
        "shorthorn-bootstrap",
        "-n",
        NAMESPACE,
        "-o",
        "json",
    ]))
    .expect("lease JSON");
    assert_eq!(
        bootstrap["metadata"]["annotations"]["shorthorn.io/bootstrapped"], "true",
        "{bootstrap}"
    );
    let members = plane.kubectl_until(
        &[
            "get",
            "lease",
            "-n",
            NAMESPACE,
            "-l",
            "shorthorn.io/raft-member=true",
            "-o",
            "name",
        ],
        |out| out.lines().count() == 3,
    );
    assert_eq!(members.lines().count(), 3, "{members}");
    // Exactly one manager bootstrapped a group; the others joined it.
    let mut bootstrapped = 0;
    for n in 1..=3 {
        let log = std::fs::read_to_string(managers.dir().join(format!("m{n}/manager.log")))
            .expect("manager log");
        bootstrapped += log.matches("bootstrapped a new group").count();
    }
    assert_eq!(bootstrapped, 1, "{}", managers.log_tails());

    // A fourth manager joins as a learner: the group has its three voters.
    managers.spawn(4);
    managers.wait_group(&[1, 2, 3, 4], 3, 1);

    // The seed's settings are the cluster's, in the log and in the Setting objects.
    let cluster = &managers.cluster;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let settings = cluster.json(&["setting", "ls"]);
        let value = |key: &str| {
            settings
                .as_array()
                .and_then(|all| all.iter().find(|s| s["key"] == key))
                .map(|s| text_of(&s["value"]))
        };
        if value("defaultReplicaCount").as_deref() == Some("2")
            && value("storageOverProvisioningPercentage").as_deref() == Some("600")
            && value("backupstorePollInterval").as_deref() == Some("500")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the seed's settings did not reach the log: {settings}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_object(
        &plane,
        "settings.shorthorn.io",
        "default-replica-count",
        "value 2",
        |o| text_of(&o["spec"]["value"]) == "2",
    );
    // The agents' disks are where the test put them, not the seed's defaultDataPath.
    cluster.ok(&["setting", "set", "storageMinimalAvailablePercentage", "0"]);
    let nodes = plane.kubectl_until(
        &["get", "nodes.shorthorn.io", "-n", NAMESPACE, "-o", "name"],
        |out| out.lines().count() == 4,
    );
    assert_eq!(nodes.lines().count(), 4, "{nodes}");

    // A volume made through the API shows up healthy, with the columns a user reads.
    cluster.create_volume("db", 16, 3, &[]);
    cluster.attach("db", "node-1");
    cluster.wait_volume("db", "healthy", |v| v["robustness"] == "healthy");
    let listed = plane.kubectl_until(&["get", "volumes.shorthorn.io", "-n", NAMESPACE], |out| {
        out.lines()
            .any(|l| l.starts_with("db ") && l.contains("healthy") && l.contains(" attached "))
    });
    let header = listed.lines().next().unwrap_or_default();
    for column in ["STATE", "ROBUSTNESS", "SIZE", "NODE", "AGE"] {
        assert!(header.contains(column), "no {column} column: {listed}");
    }
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("db ") && l.contains("attached") && l.contains("node-1")),
        "{listed}"
    );
    // The mirror writes at a bounded rate: the Replica objects may follow the Volume's.
    let deadline = Instant::now() + Duration::from_secs(60);
    while names(&plane, "replicas.shorthorn.io").len() != 3 {
        assert!(
            Instant::now() < deadline,
            "replicas mirrored: {:?}",
            names(&plane, "replicas.shorthorn.io")
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // kubectl patch of the replica count becomes a command in the log.
    patch_replicas(&plane, "db", 2);
    cluster.wait_volume("db", "numberOfReplicas 2 from the kubectl patch", |v| {
        v["numberOfReplicas"] == 2
    });
    let patched = wait_object(
        &plane,
        "volumes.shorthorn.io",
        "db",
        "SpecApplied=True",
        |o| {
            condition(o, "SpecApplied").is_some_and(|c| c["status"] == "True")
                && o["status"]["observedGeneration"] == o["metadata"]["generation"]
        },
    );
    assert_eq!(patched["spec"]["numberOfReplicas"], 2);

    // A bad patch: refused with the reason on the object and in an Event, and the log's
    // spec put back (the user sees why, not a silent revert).
    patch_replicas(&plane, "db", 0);
    let refused = wait_object(
        &plane,
        "volumes.shorthorn.io",
        "db",
        "SpecApplied=False",
        |o| condition(o, "SpecApplied").is_some_and(|c| c["status"] == "False"),
    );
    let reason = text_of(&condition(&refused, "SpecApplied").expect("condition")["message"]);
    assert!(!reason.is_empty(), "{refused}");
    wait_object(
        &plane,
        "volumes.shorthorn.io",
        "db",
        "the log's spec back",
        |o| o["spec"]["numberOfReplicas"] == 2,
    );
    assert_eq!(
        cluster.json(&["volume", "get", "db"])["numberOfReplicas"],
        2
    );
    let events = plane.kubectl_until(
        &[
            "get",
            "events",
            "-n",
            NAMESPACE,
            "--field-selector",
            "involvedObject.name=db",
            "-o",
            "json",
        ],
        |out| out.contains("EditRefused"),
    );
    assert!(events.contains("EditRefused"), "{events}");

    // A recurring job is mirrored with its schedule; kubectl edits of it reach the log,
    // and a bad cron is refused with the log's reason.
    cluster.ok(&[
        "job",
        "create",
        "nightly",
        "--task",
        "snapshot",
        "--cron",
        "0 2 * * *",
        "--retain",
        "3",
    ]);
    let job = wait_object(
        &plane,
        "recurringjobs.shorthorn.io",
        "nightly",
        "mirrored",
        |o| {
            o["spec"]["cron"] == "0 2 * * *"
                && o["status"]["nextRun"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("T02:00:00Z"))
        },
    );
    assert_eq!(job["spec"]["task"], "snapshot", "{job}");
    let listed = plane.kubectl_ok(&["get", "recurringjobs.shorthorn.io", "-n", NAMESPACE]);
    assert!(
        listed.contains("TASK") && listed.contains("LAST RUN") && listed.contains("nightly"),
        "{listed}"
    );
    let patch_job = |patch: &str| {
        plane.kubectl_ok(&[
            "patch",
            "recurringjobs.shorthorn.io",
            "nightly",
            "-n",
            NAMESPACE,
            "--type=merge",
            "-p",
            patch,
        ]);
    };
    patch_job(r#"{"spec":{"cron":"30 3 * * *","retain":5}}"#);
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.json(&["job", "get", "nightly"])["spec"]["cron"] != "30 3 * * *" {
        assert!(
            Instant::now() < deadline,
            "the cron edit never reached the log"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        cluster.json(&["job", "get", "nightly"])["spec"]["retain"],
        5
    );
    patch_job(r#"{"spec":{"cron":"every night"}}"#);
    let refused = wait_object(
        &plane,
        "recurringjobs.shorthorn.io",
        "nightly",
        "SpecApplied=False",
        |o| condition(o, "SpecApplied").is_some_and(|c| c["status"] == "False"),
    );
    let reason = text_of(&condition(&refused, "SpecApplied").expect("condition")["message"]);
    assert!(reason.contains("cron"), "{refused}");
    wait_object(
        &plane,
        "recurringjobs.shorthorn.io",
        "nightly",
        "the log's cron back",
        |o| o["spec"]["cron"] == "30 3 * * *",
    );

    // The leader SIGKILLed while the log changes under the mirror: the next leader takes
    // over and the objects end up exactly the log's volumes, none stale.
    let leader = managers.leader(&[1, 2, 3]);
    let others: Vec<u16> = [1, 2, 3].into_iter().filter(|&n| n != leader).collect();
    // The CLI fails over to the next manager when the one it asks is gone.
    let via = cluster;
    for name in ["v1", "v2"] {
        via.ok(&["volume", "create", name, "--size", "8Mi", "--replicas", "2"]);
    }
    let pid =
        std::fs::read_to_string(managers.dir().join(format!("m{leader}/pid"))).expect("leader pid");
    let _ = Command::new("kill").args(["-9", pid.trim()]).status();
    via.ok(&["volume", "create", "v3", "--size", "8Mi", "--replicas", "2"]);
    via.ok(&["volume", "delete", "v1"]);
    managers.wait_group(&others, 3, 1);
    // The killed manager comes back (its data directory: a restart, not a new member).
    managers.spawn(leader);
    managers.wait_group(&[1, 2, 3, 4], 3, 1);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let volumes = via.json(&["volume", "ls"]);
        let volumes = volumes.as_array().expect("volumes");
        let log: BTreeSet<String> = volumes.iter().map(|v| text_of(&v["name"])).collect();
        let mirrored: Vec<String> = names(&plane, "volumes.shorthorn.io");
        let mirrored_set: BTreeSet<String> = mirrored.iter().cloned().collect();
        let states_match = volumes.iter().all(|v| {
            object(&plane, "volumes.shorthorn.io", &text_of(&v["name"]))
                .is_some_and(|o| o["status"]["state"] == v["state"])
        });
        // v1 stays in the log (state deleting) until its replicas are gone.
        let settled = !log.contains("v1") && log.contains("v3");
        if settled && log == mirrored_set && mirrored.len() == log.len() && states_match {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "objects {mirrored:?} never matched the log {log:?}\n{}",
            managers.log_tails()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `backupTargetCredentialSecret` names a Secret the managers read the target's keys from
/// (no credentials file, none in their environment); a Secret that is not there is named
/// in the error.
#[test]
fn backup_credentials_come_from_the_secret_the_setting_names() {
    let Some(plane) = plane_with_crds() else {
        return;
    };
    let s3_dir = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start("s3s-fs", s3_dir.path(), "backupbucket");
    let managers = KubeManagers::start(&plane, 3, "defaultReplicaCount: 2\n");
    managers.wait_group(&[1, 2, 3], 3, 0);
    let cluster = &managers.cluster;
    cluster.ok(&["setting", "set", "storageMinimalAvailablePercentage", "0"]);
    plane.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "minio-secret",
        "-n",
        NAMESPACE,
        &format!("--from-literal=AWS_ACCESS_KEY_ID={}", s3.access_key),
        &format!("--from-literal=AWS_SECRET_ACCESS_KEY={}", s3.secret_key),
        &format!("--from-literal=AWS_ENDPOINTS={}", s3.endpoint),
    ]);
    const TARGET: &str = "s3://backupbucket@us-east-1/backupstore";
    // Without the Secret the target is refused: the managers hold no credentials.
    let (ok, _, err) = cluster.cli(&["setting", "set", "backupTarget", TARGET]);
    assert!(!ok, "a target was accepted without credentials");
    assert!(!err.is_empty());
    cluster.ok(&[
        "setting",
        "set",
        "backupTargetCredentialSecret",
        "minio-secret",
    ]);
    // Each manager reads the Secret within a moment of the setting changing.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, _, err) = cluster.cli(&["setting", "set", "backupTarget", TARGET]);
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the target was never accepted with the Secret's keys: {err}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    cluster.create_volume("data", 16, 2, &[]);
    let endpoint = cluster.attach("data", "node-2");
    write_random(&endpoint, 4);
    let backup = cluster.json(&["backup", "create", "data", "--name", "b1", "--wait"]);
    assert_eq!(backup["state"], "completed", "{backup}");
    let listed = cluster.json(&["backup", "ls", "data"]);
    assert!(listed.to_string().contains("b1"), "{listed}");

    // A setting naming a Secret that does not exist: the next backup says which.
    cluster.ok(&[
        "setting",
        "set",
        "backupTargetCredentialSecret",
        "no-such-secret",
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    for attempt in 0.. {
        let name = format!("b2-{attempt}");
        let (ok, out, err) = cluster.cli(&["backup", "create", "data", "--name", &name, "--wait"]);
        let said = format!("{out}{err}");
        if !ok && said.contains("no-such-secret") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a missing Secret was not named: ok={ok} {said}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
