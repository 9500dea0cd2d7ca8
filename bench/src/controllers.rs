//! The controllers benchmark: a release `skiff server` with hollow nodes (110 pods each, as
//! kubelet's default; the scheduler binds, they report pods ready through the API) rolls out
//! large Deployments; the figures are times to full availability and the server's memory
//! afterwards.

use std::time::{Duration, Instant};

use anyhow::bail;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use skiff_testkit::{memory_of, HollowConfig, HollowNodes, SkiffServer};

use crate::report::{Better, Report};

/// How big each workload is.
pub struct Sizes {
    big: i32,
    many: usize,
    each: i32,
}

impl Sizes {
    pub fn new(quick: bool) -> Self {
        if quick {
            Sizes {
                big: 100,
                many: 10,
                each: 10,
            }
        } else {
            Sizes {
                big: 1_000,
                many: 100,
                each: 10,
            }
        }
    }
}

fn deployment(name: &str, replicas: i32, image: &str) -> Deployment {
    deployment_of(
        name,
        replicas as usize,
        json!({"name": "server", "image": image}),
    )
}

/// A Deployment of `replicas` pods of one container, selected by `app: <name>`.
pub fn deployment_of(name: &str, replicas: usize, container: serde_json::Value) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [container]}},
        }
    }))
    .expect("a Deployment")
}

/// Waits until every named Deployment has all its replicas updated and available.
async fn rolled_out(
    api: &Api<Deployment>,
    names: &[String],
    replicas: i32,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let mut done = 0;
        for name in names {
            let d = api.get(name).await?;
            let status = d.status.unwrap_or_default();
            let generation = d.metadata.generation.unwrap_or(0);
            if status.observed_generation == Some(generation)
                && status.updated_replicas == Some(replicas)
                && status.available_replicas == Some(replicas)
                && status.replicas == Some(replicas)
            {
                done += 1;
            }
        }
        if done == names.len() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            bail!(
                "{done} of {} Deployments rolled out in {limit:?}",
                names.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(sizes: Sizes) -> anyhow::Result<Report> {
    let bin = crate::binary::release_binary()?;
    let server = SkiffServer::start(&bin, &[]).map_err(anyhow::Error::msg)?;
    // Room for every pod at once plus a rollout's surge.
    let pods = sizes.big as usize * 5 / 4 + sizes.many * sizes.each as usize;
    let _nodes = HollowNodes::start(
        &server,
        HollowConfig {
            count: pods.div_ceil(100),
            ..HollowConfig::default()
        },
    );
    let client = server.client().await.map_err(anyhow::Error::msg)?;
    let api: Api<Deployment> = Api::namespaced(client, "default");
    let mut report = Report::new("controllers", "skiff", "no target".into());
    let limit = Duration::from_secs(600);

    let big = vec!["big".to_string()];
    let started = Instant::now();
    api.create(
        &PostParams::default(),
        &deployment("big", sizes.big, "my-api:v2.1"),
    )
    .await?;
    rolled_out(&api, &big, sizes.big, limit).await?;
    report.measured(
        format!("{}-replica Deployment fully available", sizes.big),
        "s",
        Better::Lower,
        started.elapsed().as_secs_f64(),
    );

    let started = Instant::now();
    let image = json!({"spec": {"template": {"spec": {"containers": [{"name": "server", "image": "my-api:v2.2"}]}}}});
    api.patch("big", &PatchParams::default(), &Patch::Strategic(image))
        .await?;
    rolled_out(&api, &big, sizes.big, limit).await?;
    report.measured(
        format!("rolling update of the {} replicas", sizes.big),
        "s",
        Better::Lower,
        started.elapsed().as_secs_f64(),
    );

    let names: Vec<String> = (0..sizes.many).map(|i| format!("many-{i}")).collect();
    let started = Instant::now();
    for name in &names {
        api.create(
            &PostParams::default(),
            &deployment(name, sizes.each, "my-api:v2.1"),
        )
        .await?;
    }
    rolled_out(&api, &names, sizes.each, limit).await?;
    report.measured(
        format!(
            "{} Deployments of {} created at once, all available",
            sizes.many, sizes.each
        ),
        "s",
        Better::Lower,
        started.elapsed().as_secs_f64(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss, _) = memory_of(server.pid())?;
    report.measured(
        format!(
            "server resident memory with {} pods",
            sizes.big + sizes.many as i32 * sizes.each
        ),
        "MiB",
        Better::Lower,
        rss as f64 / (1024.0 * 1024.0),
    );
    Ok(report)
}
