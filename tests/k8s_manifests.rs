//! The Kubernetes manifests as `kubectl apply -k` would send them: every overlay is rendered
//! with `kubectl kustomize`, and the key fields are checked against each other and against the
//! binary itself: the containers' command lines (arguments plus the environment the pod gets
//! from its ConfigMap and `env`) must parse with `hbac`'s real flag definitions, the workers
//! must dial the coordinator's Service, the probes must hit the gRPC port and service name the
//! coordinator serves, and secrets must be referenced, never embedded.
//!
//! The guide's example run (`k8s/examples/r1`) is rendered and checked the same way.
//!
//! Needs `kubectl` (with its built-in kustomize) on PATH, or `HBAC_KUBECTL`. Without it the
//! test says so and passes, except under CI (`CI` set), where it fails.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use clap::Parser;
use hbac::backend::DeviceKind;
use hbac::cli::{Cli, Command as Sub};
use hbac_common::proto::wire::coordinator_server::SERVICE_NAME;
use serde::Deserialize;
use serde_json::Value;

/// Held while the process environment is read or changed: the tests of this binary run in
/// parallel, and [`parse`] sets the containers' variables.
static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn kubectl() -> Option<String> {
    let bin = {
        let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
        std::env::var("HBAC_KUBECTL").unwrap_or_else(|_| "kubectl".into())
    };
    let ok = Command::new(&bin)
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(bin)
}

/// `kubectl kustomize k8s/<overlay>` as one JSON value per document.
fn render(kubectl: &str, overlay: &str) -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("k8s")
        .join(overlay);
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in the rendered manifests"))
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

/// The one container of a Job's pod.
fn container(job: &Value) -> &Value {
    let cs = job["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(cs.len(), 1, "{}", job["metadata"]["name"]);
    &cs[0]
}

/// The environment the container starts with: its ConfigMaps (envFrom) then its `env` values.
fn environment(docs: &[Value], c: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for from in c["envFrom"].as_array().into_iter().flatten() {
        if let Some(name) = from["configMapRef"]["name"].as_str() {
            let cm = find(docs, "ConfigMap", name);
            for (k, v) in cm["data"].as_object().unwrap() {
                env.insert(k.clone(), str_of(v).to_string());
            }
        }
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let value = match e.get("value") {
            Some(v) => str_of(v).to_string(),
            // Downward API values (the pod name): any string will do for parsing.
            None => format!("from-{}", e["valueFrom"]),
        };
        env.insert(str_of(&e["name"]).to_string(), value);
    }
    env
}

/// Parses the container's command line with hbac's clap definitions under its environment.
fn parse(docs: &[Value], c: &Value) -> Cli {
    let env = environment(docs, c);
    // Kubernetes expands $(NAME) in args from the container's environment.
    let args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            env.iter().fold(str_of(a).to_string(), |a, (k, v)| {
                a.replace(&format!("$({k})"), v)
            })
        })
        .collect();
    assert!(
        args.iter().all(|a| !a.contains("$(")),
        "an argument names a variable the container does not have: {args:?}"
    );
    let _one = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let saved: Vec<(&String, Option<std::ffi::OsString>)> =
        env.keys().map(|k| (k, std::env::var_os(k))).collect();
    // SAFETY: no other thread of this binary reads or writes the environment while `ENV` is held.
    unsafe {
        for (k, v) in &env {
            std::env::set_var(k, v);
        }
    }
    let parsed = Cli::try_parse_from(std::iter::once("hbac".to_string()).chain(args.clone()));
    unsafe {
        for (k, v) in saved {
            match v {
                Some(v) => std::env::set_var(k, v),
                None => std::env::remove_var(k),
            }
        }
    }
    parsed.unwrap_or_else(|e| panic!("hbac {args:?} with {env:?}:\n{e}"))
}

fn mount_of<'a>(pod: &'a Value, c: &'a Value, secret: &str) -> &'a str {
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["secret"]["secretName"] == secret)
        .unwrap_or_else(|| panic!("no volume for secret {secret}"));
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .unwrap_or_else(|| panic!("secret {secret} is not mounted"));
    assert_eq!(mount["readOnly"], true);
    str_of(&mount["mountPath"])
}

fn port_named(c: &Value, name: &str) -> i64 {
    c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no container port {name}"))["containerPort"]
        .as_i64()
        .unwrap()
}

fn check_overlay(docs: &[Value], gpu: bool) {
    let kinds: Vec<&str> = docs.iter().map(|d| str_of(&d["kind"])).collect();
    assert!(
        !kinds.contains(&"Secret"),
        "secrets must be referenced, not embedded"
    );
    for d in docs {
        if d["kind"] != "Namespace" {
            assert_eq!(
                d["metadata"]["namespace"], "hbac",
                "{}",
                d["metadata"]["name"]
            );
        }
    }
    find(docs, "ServiceAccount", "hbac");

    // The coordinator: a Job whose new pods resume from the journal.
    let job = find(docs, "Job", "hbac-coordinator");
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    // A run that failed for good fails the Job at once; a crash gets a new pod.
    let rules = job["spec"]["podFailurePolicy"]["rules"].as_array().unwrap();
    let fail = rules
        .iter()
        .find(|r| r["action"] == "FailJob")
        .expect("a FailJob rule for failed runs");
    assert_eq!(
        fail["onExitCodes"]["values"],
        serde_json::json!([hbac::cli::RUN_FAILED_EXIT_CODE])
    );
    assert!(job["spec"]["backoffLimit"].as_i64().unwrap() >= 1);
    assert_eq!(pod["serviceAccountName"], "hbac");
    let c = container(job);
    let Sub::Coordinator(coord) = parse(docs, c).command else {
        panic!("the coordinator container does not run `hbac coordinator`");
    };
    coord.check_transport().unwrap();
    assert!(coord.data.starts_with("s3://"), "{}", coord.data);
    assert!(coord.out.starts_with("s3://"), "{}", coord.out);
    assert_eq!(coord.recipe.k, 5);
    assert_eq!(coord.schedule.archs.len(), 2);
    let grpc = port_named(c, "grpc");
    let metrics = port_named(c, "metrics");
    assert_eq!(coord.listen.port() as i64, grpc);
    assert!(
        coord.listen.ip().is_unspecified(),
        "pods must listen beyond loopback"
    );
    assert_eq!(coord.schedule.http.unwrap().port() as i64, metrics);
    let token_dir = mount_of(pod, c, "hbac-token");
    assert_eq!(
        coord.token.token_file.as_deref(),
        Some(format!("{token_dir}/token").as_str())
    );
    // Probes: Kubernetes' gRPC probe (grpc.health.v1) on the gRPC port; readiness asks for the
    // coordinator service by its real name.
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["grpc"]["port"].as_i64(), Some(grpc), "{probe}");
    }
    assert_eq!(c["readinessProbe"]["grpc"]["service"], SERVICE_NAME);
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    let labels = &job["spec"]["template"]["metadata"]["labels"];

    // Its Service selects it and exposes both ports; the PDB covers it.
    let svc = find(docs, "Service", "hbac-coordinator");
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&labels[k], v, "Service selector {k}");
    }
    let svc_port = |name: &str| {
        let p = svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("Service has no port {name}"));
        assert_eq!(p["targetPort"], name);
        p["port"].as_i64().unwrap()
    };
    let svc_grpc = svc_port("grpc");
    svc_port("metrics");
    let pdb = find(docs, "PodDisruptionBudget", "hbac-coordinator");
    for (k, v) in pdb["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&labels[k], v, "PDB selector {k}");
    }

    // Only worker pods reach the gRPC port; the metrics port is open.
    let policy = find(docs, "NetworkPolicy", "hbac-coordinator");
    for (k, v) in policy["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&labels[k], v, "NetworkPolicy podSelector {k}");
    }
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    let grpc_rule = rules
        .iter()
        .find(|r| r["ports"][0]["port"] == "grpc")
        .expect("an ingress rule for the gRPC port");
    let allowed = &grpc_rule["from"][0]["podSelector"]["matchLabels"];
    assert!(
        rules
            .iter()
            .any(|r| r["ports"][0]["port"] == "metrics" && r.get("from").is_none())
    );

    // The workers: an Indexed Job, one pod per GPU, dialling the Service.
    let workers = find(docs, "Job", "hbac-workers");
    let spec = &workers["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    assert_eq!(spec["parallelism"], spec["completions"]);
    assert!(spec["backoffLimitPerIndex"].as_i64().unwrap() >= 1);
    assert_eq!(spec["successPolicy"]["rules"][0]["succeededCount"], 1);
    // A drained worker's index is retired, not restarted.
    let rules = spec["podFailurePolicy"]["rules"].as_array().unwrap();
    let drained = rules
        .iter()
        .find(|r| r["action"] == "FailIndex")
        .expect("a FailIndex rule for drained workers");
    assert_eq!(
        drained["onExitCodes"]["values"],
        serde_json::json!([hbac::cli::DRAINED_EXIT_CODE])
    );
    let wpod = &spec["template"]["spec"];
    let worker_labels = &spec["template"]["metadata"]["labels"];
    for (k, v) in allowed.as_object().unwrap() {
        assert_eq!(
            &worker_labels[k], v,
            "the NetworkPolicy must admit worker pods ({k})"
        );
    }
    assert_eq!(wpod["restartPolicy"], "Never");
    let wc = container(workers);
    let Sub::Worker(worker) = parse(docs, wc).command else {
        panic!("the worker container does not run `hbac worker`");
    };
    // Workers open only the run's storage: the data root (with the cache below it) and the
    // output root.
    let run_env = environment(docs, wc);
    assert_eq!(
        worker.storage_roots,
        vec![run_env["HBAC_DATA"].clone(), run_env["HBAC_OUT"].clone()]
    );
    worker.tls.check_transport(&worker.coordinator).unwrap();
    let url = url::Url::parse(&worker.coordinator).unwrap();
    assert_eq!(url.host_str(), svc["metadata"]["name"].as_str());
    assert_eq!(url.port().map(i64::from), Some(svc_grpc));
    let token_dir = mount_of(wpod, wc, "hbac-token");
    assert_eq!(
        worker.token.token_file.as_deref(),
        Some(format!("{token_dir}/token").as_str())
    );
    assert_eq!(wc["image"], c["image"], "one image serves every pod");
    for c in [c, wc] {
        let refs: Vec<&Value> = c["envFrom"].as_array().unwrap().iter().collect();
        assert!(
            refs.iter()
                .any(|r| r["secretRef"]["name"] == "hbac-object-store"),
            "object-store credentials come from the hbac-object-store Secret"
        );
    }
    let resources = &wc["resources"];
    let image = str_of(&wc["image"]);
    if gpu {
        assert_eq!(worker.device, DeviceKind::Cuda);
        assert!(image.ends_with("-cuda"), "{image}");
        let gpus = &resources["limits"]["nvidia.com/gpu"];
        assert_eq!(str_of(gpus).parse::<usize>().unwrap(), worker.gpus);
        assert_eq!(resources["requests"]["nvidia.com/gpu"], *gpus);
        let tolerations = wpod["tolerations"].as_array().unwrap();
        assert!(tolerations.iter().any(|t| t["key"] == "nvidia.com/gpu"));
    } else {
        assert_eq!(worker.device, DeviceKind::Cpu);
        assert!(image.ends_with("-cpu"), "{image}");
        assert!(resources["limits"].get("nvidia.com/gpu").is_none());
        assert!(wpod.get("tolerations").is_none());
    }
}

#[test]
fn rendered_overlays_match_the_binary_and_each_other() {
    let Some(kubectl) = kubectl() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "kubectl is required under CI (set HBAC_KUBECTL or put it on PATH)"
        );
        eprintln!("skipped: kubectl not found (set HBAC_KUBECTL); the manifests were not checked");
        return;
    };
    for (overlay, gpu) in [("overlays/gpu", true), ("overlays/cpu", false)] {
        let docs = render(&kubectl, overlay);
        check_overlay(&docs, gpu);
    }
    // The operations guide's example run: its settings reach the coordinator's flags.
    let docs = render(&kubectl, "examples/r1");
    check_overlay(&docs, true);
    let workers = find(&docs, "Job", "hbac-workers");
    assert_eq!(workers["spec"]["parallelism"], 10);
    let Sub::Coordinator(coord) =
        parse(&docs, container(find(&docs, "Job", "hbac-coordinator"))).command
    else {
        unreachable!()
    };
    assert_eq!(coord.out, "s3://my-bucket/hbac-runs/r1");
    assert_eq!(
        coord.recipe.pretrained.len(),
        2,
        "{:?}",
        coord.recipe.pretrained
    );
}

#[test]
fn the_prediction_example_runs_predict_on_a_gpu_with_the_binarys_flags() {
    let Some(kubectl) = kubectl() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "kubectl is required under CI (set HBAC_KUBECTL or put it on PATH)"
        );
        eprintln!("skipped: kubectl not found (set HBAC_KUBECTL); the manifests were not checked");
        return;
    };
    let docs = render(&kubectl, "examples/predict");
    let job = find(&docs, "Job", "hbac-predict");
    let c = container(job);
    let Sub::Predict(p) = parse(&docs, c).command else {
        panic!(
            "the prediction Job does not run `hbac predict`: {}",
            c["args"]
        );
    };
    assert_eq!(p.run.as_deref(), Some("s3://my-bucket/hbac-runs/r1"));
    assert_eq!(p.data, "s3://my-bucket/hms-new");
    assert_eq!(p.out, "s3://my-bucket/hms-new/submission.csv");
    assert_eq!(p.device, DeviceKind::Cuda);
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "1");
    // The cache it converts the test files into is a writable volume.
    let cache = p.cache.expect("--cache");
    let mounts = c["volumeMounts"].as_array().unwrap();
    assert!(
        mounts.iter().any(|m| m["mountPath"] == cache.as_str()),
        "--cache={cache} is not a mounted volume: {mounts:?}"
    );
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
}

#[test]
fn the_operations_guide_shows_the_example_run_as_committed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = std::fs::read_to_string(root.join("k8s/examples/r1/kustomization.yaml")).unwrap();
    let guide = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    assert!(
        guide.contains(&format!("```yaml\n{file}```")),
        "docs/operations.md must show k8s/examples/r1/kustomization.yaml verbatim"
    );
}
