//! dupmirror reading `s3://` from a real S3 server (moto) on 127.0.0.1 that upstream
//! duplicity 3.x wrote into directly (`boto3+s3://` with `--s3-endpoint-url`): the oracle
//! scenario (full, incrementals, a file over several volumes, a new full chain) for an
//! incremental and a late host, with more than 1,000 unrelated keys under the prefix
//! (paginated listing); and the faults: a connection cut mid-volume, `503 SlowDown`, a
//! refused access key, a missing bucket, each with its outcome and one clear line.

use crate::support::proxy::*;
use crate::support::remote::*;
use crate::support::scenario;
use crate::support::stores::*;
use crate::support::*;
use std::ffi::OsString;

const BUCKET: &str = "backups";

fn env(lab: &Lab) -> Vec<(OsString, OsString)> {
    lab.dupmirror_env.clone()
}

#[test]
fn s3_written_by_duplicity_matches_the_oracle() {
    let Some(dup) = s3_duplicity() else {
        return;
    };
    let site = Site::new();
    let Some(s3) = moto(&site.srv, BUCKET) else {
        return;
    };
    let mut steps = multivolume_steps();
    steps.push(scenario::full(|fs| {
        fs.write("after-new-full.txt", b"a new chain\n");
        fs.remove("new.bin");
    }));
    let outcome = scenario::run_from(
        s3_lab(dup, &s3, BUCKET, "host1"),
        "s3",
        &[],
        steps,
        4,
        |_, k| {
            // The duplicity spellings of the URL all name the same place.
            OsString::from(match k % 3 {
                0 => format!("s3://{BUCKET}/host1"),
                1 => format!("boto3+s3://{BUCKET}/host1/"),
                _ => format!("s3+http://{BUCKET}//host1"),
            })
        },
    );
    // Unrelated keys that sort before duplicity's put the backup on the second page of the
    // listing (added now: upstream duplicity lists them slowly). Keys in a deeper "folder"
    // are left out like subfolders. A late host must still find every set.
    s3.boto3(&format!(
        "for i in range(1100):\n    s3.put_object(Bucket='{BUCKET}', Key=f'host1/a-junk-{{i:04}}', Body=b'x')\n\
         s3.put_object(Bucket='{BUCKET}', Key='host1/sub/duplicity-full.20200101T000000Z.manifest', Body=b'no')"
    ));
    let (_, latest) = outcome.oracles.last().expect("steps");
    let host = outcome.lab.host("p");
    let source = format!("s3://{BUCKET}/host1");
    host.sync_env(&source, &[], &env(&outcome.lab))
        .assert_ok("late host behind 1,100 unrelated keys");
    latest.assert_same(&host.tree(), Compare::default(), "paginated listing");
    // A poll with nothing new makes one listing (of two pages here) and fetches nothing.
    let run = host.sync_env(&source, &["--json"], &env(&outcome.lab));
    let r = sync_report(run.assert_ok("poll"));
    assert_eq!(r.transfer.listings, 1);
    assert_eq!(r.transfer.files_fetched, 0);
}

/// A lab with one full backup in S3 (two volumes and a bit), synced once cleanly.
struct Faults {
    _site: Site,
    s3: S3Server,
    lab: Lab,
    oracle: Tree,
    clean_bytes: u64,
}

fn faults() -> Option<Faults> {
    let dup = s3_duplicity()?;
    let site = Site::new();
    let s3 = moto(&site.srv, BUCKET)?;
    let mut lab = s3_lab(dup, &s3, BUCKET, "f");
    lab.fs.write("big.bin", &random_bytes(7, 2_200_000));
    lab.fs.write("small", b"small\n");
    lab.full(t(0));
    let oracle = lab.restore(t(0));
    let clean = lab.host("c");
    let r = sync_report(
        clean
            .sync_env(format!("s3://{BUCKET}/f"), &["--json"], &env(&lab))
            .assert_ok("clean sync"),
    );
    Some(Faults {
        clean_bytes: r.transfer.bytes_downloaded,
        _site: site,
        s3,
        lab,
        oracle,
    })
}

/// dupmirror's environment with the S3 endpoint replaced by a proxy's.
fn through(f: &Faults, proxy: &FaultProxy) -> Vec<(OsString, OsString)> {
    let mut e: Vec<_> = env(&f.lab)
        .into_iter()
        .filter(|(k, _)| k != "AWS_ENDPOINT_URL")
        .collect();
    e.push((
        "AWS_ENDPOINT_URL".into(),
        format!("http://127.0.0.1:{}", proxy.port).into(),
    ));
    e
}

#[test]
fn s3_faults_each_give_their_outcome_and_one_line() {
    let Some(f) = faults() else {
        return;
    };
    let source = format!("s3://{BUCKET}/f");
    let secret = AWS_ENV[1].1;

    // Cut mid-volume: resumed with Range where it stopped; nothing is fetched twice.
    let proxy = FaultProxy::start(f.s3.server.port, Fault::CutAfter(300_000), 2);
    let host = f.lab.host("cut");
    let r = sync_report(
        host.sync_env(&source, &["--json"], &through(&f, &proxy))
            .assert_ok("cut mid-volume"),
    );
    f.oracle
        .assert_same(&host.tree(), Compare::default(), "cut mid-volume");
    assert_eq!(proxy.faults(), 2);
    assert!(r.transfer.retries >= 2);
    assert!(r.transfer.bytes_resumed > 0);
    assert_eq!(r.transfer.bytes_refetched, 0);
    assert_eq!(r.transfer.bytes_downloaded, f.clean_bytes);
    eprintln!(
        "s3 cut: resumed {} bytes, refetched {}, retries {}",
        r.transfer.bytes_resumed, r.transfer.bytes_refetched, r.transfer.retries
    );

    // 503 SlowDown: retried with backoff, announced, then it works.
    let proxy = FaultProxy::start(f.s3.server.port, Fault::Answer(S3_SLOW_DOWN), 3);
    let host = f.lab.host("slow");
    let run = host.sync_env(&source, &["--json"], &through(&f, &proxy));
    let r = sync_report(run.assert_ok("503 SlowDown"));
    f.oracle
        .assert_same(&host.tree(), Compare::default(), "503 SlowDown");
    assert_eq!(r.transfer.retries, 3);
    assert!(
        run.stderr
            .contains("HTTP 503: SlowDown: Please reduce your request rate"),
        "{}",
        run.stderr
    );

    // An access key the server refuses: no retries, one line, no secret.
    let proxy = FaultProxy::start(f.s3.server.port, Fault::Answer(S3_BAD_KEY), 100);
    let host = f.lab.host("key");
    let run = host.sync_env(&source, &["--quiet"], &through(&f, &proxy));
    assert_one_clear_line(&run, "refused key", &["InvalidAccessKeyId"], secret);
    assert!(
        run.stderr.contains("from the environment"),
        "{}",
        run.stderr
    );
    assert_eq!(proxy.faults(), 1, "a refused key is not retried");
    assert!(host.tree_opt().is_none());

    // A bucket that does not exist.
    let host = f.lab.host("nob");
    let run = host.sync_env("s3://no-such-bucket/f", &["--quiet"], &env(&f.lab));
    assert_one_clear_line(&run, "missing bucket", &["NoSuchBucket"], secret);
    assert!(host.tree_opt().is_none());
}
