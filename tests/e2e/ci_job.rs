//! The CI job's side (issue 17): `compose up -d`, then `compose-ingress wait` hands over the URLs
//! once a request through the bed's Traefik reaches the container, as a job would use them.

use std::process::{Command, Output};

use testbed::{
    ComposeVersion, ENABLE, RunnerPod, Sidecar, bed, compose_file, doc_block, doc_commands,
    doc_inline, domain, http_get, run_doc_line, substitute, unique_namespace, web,
};

use crate::SIDECAR;

/// `compose-ingress <args>` as a job in the runner pod runs it, against `sidecar`.
pub(crate) fn job(sidecar: &Sidecar, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(SIDECAR.binary)
        .args(args)
        .args(["--sidecar", &format!("http://{}", sidecar.listen)])
        .envs(env.iter().copied())
        .output()
        .expect("run compose-ingress as a job")
}

pub(crate) fn show(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn wait_hands_over_urls_that_answer_at_once_and_fails_fast_on_refusal() {
    let ns = unique_namespace("cijob");
    let pod: RunnerPod = bed().runner_pod(&ns, "runner-0");
    // The bed's Traefik is the ingress controller; the sidecar runs on the host here, so its
    // in-cluster address is loopback.
    let sidecar = Sidecar::start(
        &SIDECAR,
        bed(),
        &pod,
        &["--probe-url", bed().get("TRAEFIK_WEB")],
    )
    .await;
    let v2 = ComposeVersion::V2;

    // An app that needs a few seconds before it listens: routed by Traefik before it answers
    // (502 meanwhile), as a starting application is. On port 5000, the docs' example port.
    let slow = "  web:\n    image: compose-ingress-test/busybox:1\n    stop_signal: SIGKILL\n    \
                command: [\"sh\", \"-c\", \"sleep 4; echo job-page > /www/index.html; exec httpd -f -p 5000 -h /www\"]\n    \
                ports: [\"5000\"]\n    labels: {compose-ingress.enable: \"true\"}\n";
    // The job's commands as docs/ci-jobs.md writes them, in a job's working directory with its
    // compose file. The job's environment is what a
    // runner gives it (its id, DOCKER_HOST), `compose-ingress` on PATH, and the sidecar's address
    // in its documented variable (the test's sidecar listens on a port of its own).
    let work = pod.dir.join("job");
    std::fs::create_dir_all(&work).expect("the job's directory");
    std::fs::write(work.join("compose.yml"), compose_file(&[slow.to_string()])).expect("compose");
    let bin_dir = std::path::Path::new(SIDECAR.binary)
        .parent()
        .expect("the binary's directory")
        .to_string_lossy()
        .to_string();
    let sidecar_url = format!("http://{}", sidecar.listen);
    let outputs = pod.dir.join("github-output");
    let gh = outputs.to_str().expect("path");
    let env = [
        ("CI_JOB_ID", "jobapp"),
        ("GITHUB_RUN_ID", "jobapp"),
        ("GITHUB_OUTPUT", gh),
        ("DOCKER_HOST", pod.docker_host.as_str()),
        ("COMPOSE_INGRESS_SIDECAR", sidecar_url.as_str()),
        ("PATH", bin_dir.as_str()),
    ];
    let host = format!("web-5000-jobapp-runner-0.{}", domain(&ns));
    let url = format!("http://{host}/");
    let docs = doc_commands("docs/ci-jobs.md", "ci-wait-urls", &[]);
    let [.., urls] = docs.as_slice() else {
        panic!("docs/ci-jobs.md ci-wait-urls: expected up, wait, urls: {docs:?}");
    };
    for line in &docs {
        let out = run_doc_line(bed(), line, &work, &env);
        assert_eq!(out.status.code(), Some(0), "`{line}`: {}", show(&out));
        if line == urls {
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                format!("web 5000 {url}\n")
            );
        }
        // `wait` returned: the URL answers now, through the controller, no retry.
        let dotenv = std::fs::read_to_string(work.join("urls.env")).unwrap_or_default();
        if line.contains(" wait ") {
            assert_eq!(dotenv, format!("WEB_5000_URL={url}\n"), "`{line}`");
            let (code, body) = http_get(&format!("{}/", bed().get("TRAEFIK_WEB")), Some(&host));
            assert_eq!((code, body.trim()), (200, "job-page"));
        }
    }

    // The README's quick start: its compose file (the bed has no registry: busybox's httpd for
    // nginx, on nginx's port) and its two job lines, as another job.
    let quick = pod.dir.join("quick");
    std::fs::create_dir_all(&quick).expect("the quick start's directory");
    let compose = substitute(
        "README.md readme-label",
        &doc_block("README.md", "readme-label"),
        &[(
            "    image: nginx\n",
            "    image: compose-ingress-test/busybox:1\n    stop_signal: SIGKILL\n    \
             command: [\"sh\", \"-c\", \"echo quick-page > /www/index.html && exec httpd -f -p 80 -h /www\"]\n",
        )],
    );
    std::fs::write(quick.join("compose.yml"), compose).expect("the README's compose file");
    let quick_env: Vec<(&str, &str)> = env
        .iter()
        .map(|&(k, v)| {
            if k == "CI_JOB_ID" {
                (k, "quick")
            } else {
                (k, v)
            }
        })
        .collect();
    for line in doc_commands("README.md", "readme-up-wait", &[]) {
        let out = run_doc_line(bed(), &line, &quick, &quick_env);
        assert_eq!(
            out.status.code(),
            Some(0),
            "README `{line}`: {}",
            show(&out)
        );
    }
    let quick_host = format!("web-80-quick-runner-0.{}", domain(&ns));
    assert_eq!(
        std::fs::read_to_string(quick.join("urls.env")).expect("the README's urls.env"),
        format!("WEB_80_URL=http://{quick_host}/\n")
    );
    let (code, body) = http_get(&format!("{}/", bed().get("TRAEFIK_WEB")), Some(&quick_host));
    assert_eq!((code, body.trim()), (200, "quick-page"));

    // The GitLab recipe: its script as written; the dotenv report it names defines the
    // variable its environment's URL uses.
    let gitlab: serde_json::Value =
        serde_yaml_ng::from_str(&doc_block("docs/ci-jobs.md", "ci-gitlab"))
            .expect("docs/ci-jobs.md's GitLab recipe is YAML");
    let job_def = &gitlab["preview"];
    for line in job_def["script"].as_array().expect("a script").iter() {
        let line = line.as_str().expect("a script line");
        let out = run_doc_line(bed(), line, &work, &env);
        assert_eq!(
            out.status.code(),
            Some(0),
            "GitLab `{line}`: {}",
            show(&out)
        );
    }
    let report = job_def["artifacts"]["reports"]["dotenv"]
        .as_str()
        .expect("a dotenv report");
    let report = std::fs::read_to_string(work.join(report)).expect("the dotenv report");
    let var = job_def["environment"]["url"]
        .as_str()
        .expect("an environment url");
    let var = var.strip_prefix('$').expect("the URL is a variable");
    assert_eq!(report, format!("{var}={url}\n"), "GitLab's environment URL");

    // The GitHub Actions recipe: its steps as written, but for GitHub's `${{ … }}` expressions,
    // which the runner evaluates from the step outputs (here: from $GITHUB_OUTPUT), and curl's
    // address (the bed has no DNS for the domain: to Traefik's web entry point).
    let github: serde_json::Value =
        serde_yaml_ng::from_str(&doc_block("docs/ci-jobs.md", "ci-github"))
            .expect("docs/ci-jobs.md's GitHub recipe is YAML");
    let traefik = bed()
        .get("TRAEFIK_WEB")
        .trim_start_matches("http://")
        .to_string();
    let connect = format!("curl --connect-to ::{traefik}");
    let steps = github.as_array().expect("a list of steps");
    let id = steps
        .iter()
        .find_map(|s| s["id"].as_str())
        .expect("a step with an id (the one whose outputs the last step uses)");
    for step in steps {
        let line = step["run"].as_str().expect("a run step");
        let outputs_now = std::fs::read_to_string(&outputs).unwrap_or_default();
        let mut line = line.replace("curl", &connect);
        for (name, value) in outputs_now.lines().filter_map(|l| l.split_once('=')) {
            line = line.replace(&format!("${{{{ steps.{id}.outputs.{name} }}}}"), value);
        }
        assert!(
            !line.contains("${{"),
            "an unresolved expression in `{line}`"
        );
        let out = run_doc_line(bed(), &line, &work, &env);
        assert_eq!(
            out.status.code(),
            Some(0),
            "GitHub `{line}`: {}",
            show(&out)
        );
    }
    assert_eq!(
        std::fs::read_to_string(&outputs).expect("GITHUB_OUTPUT written"),
        format!("web_5000_url={url}\n")
    );

    // The page's first line: "Right after `docker compose up -d` a job wants its URLs". As
    // written, in a job directory of its own: Compose names the project after the directory,
    // the name `wait` then asks for.
    let plain = pod.dir.join("plainjob");
    std::fs::create_dir_all(&plain).expect("the job's directory");
    std::fs::write(
        plain.join("compose.yml"),
        compose_file(&[web("web", "plain-page", 5000, "5000", &[ENABLE])]),
    )
    .expect("the job's compose file");
    let up = doc_inline("docs/ci-jobs.md", "docker compose up -d");
    let out = run_doc_line(bed(), &up, &plain, &env);
    assert_eq!(out.status.code(), Some(0), "`{up}`: {}", show(&out));
    let out = job(&sidecar, &["wait", "plainjob", "--timeout", "2m"], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "wait after `{up}`: {}",
        show(&out)
    );
    let plain_host = format!("web-5000-plainjob-runner-0.{}", domain(&ns));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("web 5000 http://{plain_host}/\n")
    );
    let (code, body) = http_get(&format!("{}/", bed().get("TRAEFIK_WEB")), Some(&plain_host));
    assert_eq!((code, body.trim()), (200, "plain-page"));

    // A composition refused by a bad label: `wait` fails with the reason, not at its timeout.
    pod.compose_as(
        v2,
        "badjob",
        &compose_file(&[web(
            "web",
            "x",
            8080,
            "8080",
            &[ENABLE, ("compose-ingress.host", "a.evil.example")],
        )]),
        &["up", "-d"],
    );
    let out = job(&sidecar, &["wait", "badjob", "--timeout", "5m"], &[]);
    assert_eq!(out.status.code(), Some(3), "refused: {}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("host-outside-domain"),
        "{}",
        show(&out)
    );

    // A service that never comes: the timeout status, naming it.
    let out = job(
        &sidecar,
        &["wait", "jobapp", "--service", "worker", "--timeout", "3s"],
        &[],
    );
    assert_eq!(out.status.code(), Some(4), "timeout: {}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing: worker"),
        "{}",
        show(&out)
    );
}
