//! Every field a job controls that reaches a log line, a refusal or the hint channel is
//! bounded: a long unknown label key and an over-long project name.

use testbed::{CONVERGE, ENABLE, Sidecar, bed, compose_file, eventually, web};

use super::setup;
use crate::SIDECAR;
use crate::operability::Endpoints;

/// A container with an unknown `compose-ingress.*` key of 4 KiB, and one whose project label
/// is 2 KiB long: the refusal's log line shows the key cut to 80 characters, and the
/// composition's key in the log lines and `/exposures` is a shortened one (start, marker,
/// hash), refused as a name; docs/troubleshooting.md's fix, `docker compose -p` with a name of
/// the characters it lists, is exposed. Seen failing with the raw key and name (4 KiB in the log line).
#[tokio::test]
async fn long_label_keys_and_project_names_are_bounded_in_logs_and_exposures() {
    let (ns, pod, admin) = setup("bounds").await;
    let sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &[]).await;
    let long_key = format!("compose-ingress.{}", "k".repeat(4096));
    let long_project = "p".repeat(2048);
    for (name, labels) in [
        (
            "typo",
            vec![
                "com.docker.compose.project=typo".to_string(),
                "com.docker.compose.service=web".to_string(),
                "compose-ingress.enable=true".to_string(),
                format!("{long_key}=1"),
            ],
        ),
        (
            "longname",
            vec![
                format!("com.docker.compose.project={long_project}"),
                "com.docker.compose.service=web".to_string(),
                "compose-ingress.enable=true".to_string(),
            ],
        ),
    ] {
        let mut args = vec!["run", "-d", "--name", name, "-p", "80"];
        for l in &labels {
            args.extend(["--label", l.as_str()]);
        }
        args.extend(["compose-ingress-test/busybox:1", "sleep", "3600"]);
        let out = pod.docker_cli(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = sidecar.wait_log("label refused").await;
    let label = line["label"].as_str().expect("a label field");
    assert!(label.starts_with("compose-ingress.kkk"), "{line}");
    assert!(label.chars().count() <= 80, "{} characters", label.len());
    let refused = eventually("the long name refused", CONVERGE, || async {
        sidecar.exposures()["compositions"]
            .as_array()?
            .iter()
            .find(|c| c["name"].as_str().is_some_and(|n| n.starts_with("ppp")))
            .cloned()
    })
    .await;
    let key = refused["name"].as_str().unwrap_or_default();
    assert!(key.len() < 100, "a {}-byte key in /exposures", key.len());
    assert_eq!(
        refused["reasons"][0]["reason"], "invalid-project-name",
        "{refused}"
    );
    // The fix it gives is one Compose v2 takes (its -p refuses '.' and capitals).
    let message = refused["reasons"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("docker compose -p and lowercase letters, digits, '-' and '_'"),
        "{message}"
    );
    assert!(
        sidecar.logs().lines().all(|l| l.len() < 4096),
        "no log line carries the 4 KiB key or the 2 KiB name"
    );

    // docs/troubleshooting.md's fix, run as written (the RunnerPod's helpers give Compose a -p
    // of their own) but for the name, one of each character class it lists, and the subcommand
    // the span leaves to the reader, in a job's directory with its compose file.
    let fix = testbed::substitute(
        "docs/troubleshooting.md",
        &testbed::doc_inline(
            "docs/troubleshooting.md",
            "docker compose -p <lowercase letters, digits, - _>",
        ),
        &[("<lowercase letters, digits, - _>", "fixed-name_2")],
    );
    let work = pod.dir.join("fixed");
    std::fs::create_dir_all(&work).expect("the job's directory");
    std::fs::write(
        work.join("compose.yml"),
        compose_file(&[web("web", "fixed-page", 80, "80", &[ENABLE])]),
    )
    .expect("the job's compose file");
    let line = format!("{fix} up -d");
    testbed::run_doc_line_ok(
        bed(),
        &line,
        &work,
        &[("DOCKER_HOST", pod.docker_host.as_str())],
    );
    let (_, ingress) = testbed::wait_exposed(&admin, &ns, "runner-0", "fixed-name_2").await;
    assert!(
        testbed::through_ingress(&testbed::ingress_hosts(&ingress)[0])
            .await
            .contains("fixed-page"),
        "`{line}` is exposed"
    );
    let state = super::state_of(&sidecar.exposures(), "fixed-name_2").expect("in /exposures");
    assert_eq!(state["state"], "exposed", "{state}");
}
