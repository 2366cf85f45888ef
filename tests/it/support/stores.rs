//! S3 and SFTP servers for the tests, on 127.0.0.1 and started and stopped by them: moto's S3
//! server (from the moto venv that `scripts/install-deps.sh` makes, with an upstream
//! duplicity that writes into S3 directly), and OpenSSH's sshd with its own host key, a test
//! user key and a private client configuration (`--ssh-config`). A missing program skips the
//! test as for the other servers (see [`super::remote`]).

use super::lab::Lab;
use super::oracle::Duplicity;
use super::process::run_with_timeout;
use super::remote::{free_port, have, Server};
use super::root_for;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The venv with moto's S3 server, boto3 and an upstream duplicity that writes into S3.
pub fn moto_venv() -> PathBuf {
    std::env::var_os("DUPMIRROR_MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/moto"))
}

/// Any keys do for moto; the region must be one it knows.
pub const AWS_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "AKIDMOTOTEST"),
    ("AWS_SECRET_ACCESS_KEY", "moto-secret-never-shown"),
    ("AWS_DEFAULT_REGION", "us-east-1"),
];

/// An S3 server (moto) on 127.0.0.1 with `bucket` created; `url` is its endpoint.
pub struct S3Server {
    pub server: Server,
    pub endpoint: String,
}

impl S3Server {
    /// Runs a boto3 snippet against the server (`s3` is a client for it).
    pub fn boto3(&self, code: &str) {
        let script = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='{}')\n{code}\n",
            self.endpoint
        );
        let mut cmd = Command::new(moto_venv().join("bin/python"));
        cmd.arg("-c").arg(script);
        for (k, v) in AWS_ENV {
            cmd.env(k, v);
        }
        run_with_timeout(cmd, Duration::from_secs(120)).assert_ok("boto3");
    }
}

/// moto's S3 server with an empty bucket; `None` (skipped) when the venv is missing.
pub fn moto(scratch: &Path, bucket: &str) -> Option<S3Server> {
    let bin = moto_venv().join("bin/moto_server");
    if !have(
        &bin.display().to_string(),
        "scripts/install-deps.sh (moto venv)",
    ) {
        return None;
    }
    let port = free_port();
    let mut cmd = Command::new(bin);
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    let endpoint = format!("http://127.0.0.1:{port}");
    let server = Server::start(
        cmd,
        port,
        endpoint.clone(),
        &scratch.join(format!("moto{port}.log")),
        "moto_server",
    );
    let s3 = S3Server { server, endpoint };
    s3.boto3(&format!("s3.create_bucket(Bucket='{bucket}')"));
    Some(s3)
}

/// Upstream duplicity 3.x from the moto venv (it has boto3 for `boto3+s3://`).
pub fn s3_duplicity() -> Option<Duplicity> {
    let bin = moto_venv().join("bin/duplicity");
    if !have(
        &bin.display().to_string(),
        "scripts/install-deps.sh (moto venv)",
    ) {
        return None;
    }
    let out = Command::new(&bin).arg("--version").output().ok()?;
    Some(Duplicity {
        bin,
        version_text: String::from_utf8_lossy(&out.stdout).trim().to_string(),
    })
}

/// A lab whose upstream duplicity writes straight into `s3://BUCKET/PREFIX` on `s3`.
pub fn s3_lab(dup: Duplicity, s3: &S3Server, bucket: &str, prefix: &str) -> Lab {
    let mut lab = Lab::new(dup)
        .backup_opts(&["--volsize", "1"])
        .repo_opts(&["--s3-endpoint-url", &s3.endpoint]);
    for (k, v) in AWS_ENV {
        lab = lab.env(k, v);
        lab.dupmirror_env.push((k.into(), v.into()));
    }
    lab.dupmirror_env
        .push(("AWS_ENDPOINT_URL".into(), s3.endpoint.clone().into()));
    lab.target = Some(format!("boto3+s3://{bucket}/{prefix}"));
    lab
}

/// OpenSSH's sshd on 127.0.0.1 with its own host key, and a client configuration (key,
/// known_hosts) for dupmirror's `ssh`: `--ssh-config config`.
pub struct Sshd {
    pub server: Server,
    pub dir: PathBuf,
    /// `ssh -F` file: the test key, the known_hosts below, user root.
    pub config: PathBuf,
    pub known_hosts: PathBuf,
}

impl Sshd {
    /// The SFTP URL of an absolute folder on this server.
    pub fn url(&self, dir: &Path) -> String {
        format!(
            "sftp://root@127.0.0.1:{}/{}",
            self.server.port,
            dir.display()
        )
    }

    /// The host key as a known_hosts line for `[127.0.0.1]:port`.
    pub fn known_hosts_line(&self, port: u16) -> String {
        let key = fs::read_to_string(self.dir.join("hostkey.pub")).unwrap();
        let mut words = key.split_whitespace();
        let (kind, blob) = (words.next().unwrap(), words.next().unwrap());
        format!("[127.0.0.1]:{port} {kind} {blob}\n")
    }
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("run ssh-keygen");
    assert!(out.status.success(), "ssh-keygen failed");
}

/// sshd serving the machine's files over SFTP to root with a test key; `None` (skipped)
/// when sshd is missing or the tests do not run as root (sshd must log the user in).
pub fn sshd(scratch: &Path) -> Option<Sshd> {
    if !have("/usr/sbin/sshd", "openssh-server") || !have("ssh", "openssh-client") {
        return None;
    }
    if !root_for("logging in to a test sshd (the SFTP tests)") {
        return None;
    }
    let dir = scratch.join(format!("sshd{}", free_port()));
    fs::create_dir_all(&dir).unwrap();
    fs::create_dir_all("/run/sshd").unwrap();
    keygen(&dir.join("hostkey"));
    keygen(&dir.join("userkey"));
    fs::copy(dir.join("userkey.pub"), dir.join("authorized_keys")).unwrap();
    let port = free_port();
    let d = dir.display();
    fs::write(
        dir.join("sshd_config"),
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/hostkey\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
             StrictModes no\nUsePAM no\nSubsystem sftp internal-sftp\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new("/usr/sbin/sshd");
    cmd.arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(dir.join("sshd_config"));
    let server = Server::start(
        cmd,
        port,
        format!("sftp://127.0.0.1:{port}"),
        &dir.join("sshd.log"),
        "sshd",
    );
    let known_hosts = dir.join("known_hosts");
    let config = dir.join("ssh_config");
    fs::write(
        &config,
        format!(
            "Host *\n  User root\n  IdentityFile {d}/userkey\n  IdentitiesOnly yes\n  \
             UserKnownHostsFile {}\n  GlobalKnownHostsFile /dev/null\n",
            known_hosts.display()
        ),
    )
    .unwrap();
    let sshd = Sshd {
        server,
        dir,
        config,
        known_hosts,
    };
    fs::write(&sshd.known_hosts, sshd.known_hosts_line(port)).unwrap();
    Some(sshd)
}
