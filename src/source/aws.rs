//! Where an `s3://` source finds its credentials, region and endpoint: the places every AWS
//! tool reads, in the same order of precedence.
//!
//! ```text
//! profile     = $AWS_PROFILE, else "default"
//! credentials = $AWS_ACCESS_KEY_ID + $AWS_SECRET_ACCESS_KEY (+ $AWS_SESSION_TOKEN)
//!             | [profile] of $AWS_SHARED_CREDENTIALS_FILE (~/.aws/credentials)
//!             | [profile NAME] / [default] of $AWS_CONFIG_FILE (~/.aws/config)
//!             | none: requests go unsigned (a public bucket, or one behind a CDN)
//! region      = $AWS_REGION | $AWS_DEFAULT_REGION | region= of the profile | us-east-1
//! endpoint    = --s3-endpoint-url | $AWS_ENDPOINT_URL_S3 | $AWS_ENDPOINT_URL
//!             | endpoint_url= of the profile | none (AWS itself)
//! ```
//!
//! Limits: no instance-metadata (EC2/ECS) credentials, no SSO, no `credential_process`, no
//! `source_profile` role assumption: those need the AWS SDK's machinery; export the keys they
//! yield into the environment instead. A profile named in `$AWS_PROFILE` that neither file
//! has is an error, not a silent fall back to unsigned requests.

use super::url::Secret;
use anyhow::{bail, Result};
use std::collections::HashMap;
use std::path::PathBuf;

/// An access key: the secret and the session token are never shown.
#[derive(Clone, Debug)]
pub struct AwsKeys {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
    /// Where the keys came from, as shown in errors ("the environment", a file path).
    pub origin: String,
}

/// What an S3 source needs besides the bucket and prefix.
#[derive(Clone, Debug)]
pub struct AwsSettings {
    pub keys: Option<AwsKeys>,
    pub region: String,
    pub endpoint: Option<String>,
}

/// How to read the environment and the files (so that tests can give their own).
pub struct AwsEnv<'a> {
    pub var: &'a dyn Fn(&str) -> Option<String>,
    pub read: &'a dyn Fn(&PathBuf) -> Option<String>,
    pub home: Option<PathBuf>,
}

impl AwsEnv<'_> {
    /// The process's environment and files.
    pub fn resolve_process(endpoint_option: Option<&str>) -> Result<AwsSettings> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let read = |p: &PathBuf| std::fs::read_to_string(p).ok();
        AwsEnv {
            var: &var,
            read: &read,
            home: std::env::var_os("HOME").map(PathBuf::from),
        }
        .resolve(endpoint_option)
    }

    fn file(&self, env: &str, default: &str) -> Option<(PathBuf, HashMap<String, Section>)> {
        let path = (self.var)(env)
            .map(PathBuf::from)
            .or_else(|| self.home.as_ref().map(|h| h.join(".aws").join(default)))?;
        let text = (self.read)(&path)?;
        Some((path, parse_ini(&text)))
    }

    pub fn resolve(&self, endpoint_option: Option<&str>) -> Result<AwsSettings> {
        let named = (self.var)("AWS_PROFILE");
        let profile = named.clone().unwrap_or_else(|| "default".into());
        let credentials = self.file("AWS_SHARED_CREDENTIALS_FILE", "credentials");
        let config = self.file("AWS_CONFIG_FILE", "config");
        let config_section = config.as_ref().and_then(|(path, sections)| {
            let key = if profile == "default" {
                "default".to_string()
            } else {
                format!("profile {profile}")
            };
            sections.get(&key).map(|s| (path, s))
        });
        let credentials_section = credentials
            .as_ref()
            .and_then(|(path, sections)| sections.get(&profile).map(|s| (path, s)));
        if named.is_some() && config_section.is_none() && credentials_section.is_none() {
            bail!(
                "AWS profile {profile:?} (from AWS_PROFILE) is in neither ~/.aws/credentials \
                 nor ~/.aws/config"
            );
        }
        let env_keys = match ((self.var)("AWS_ACCESS_KEY_ID"), (self.var)("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => Some(AwsKeys {
                access_key_id: id,
                secret_access_key: Secret::new(secret),
                session_token: (self.var)("AWS_SESSION_TOKEN").map(Secret::new),
                origin: "the environment".into(),
            }),
            (Some(_), None) | (None, Some(_)) => bail!(
                "only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set; set both or neither"
            ),
            (None, None) => None,
        };
        let keys = match env_keys {
            Some(k) => Some(k),
            None => credentials_section
                .iter()
                .chain(config_section.iter())
                .find_map(|(path, s)| s.keys(path)),
        };
        let from_profile = |key: &str| config_section.and_then(|(_, s)| s.0.get(key).cloned());
        let region = (self.var)("AWS_REGION")
            .or_else(|| (self.var)("AWS_DEFAULT_REGION"))
            .or_else(|| from_profile("region"))
            .unwrap_or_else(|| "us-east-1".into());
        let endpoint = endpoint_option
            .map(str::to_string)
            .or_else(|| (self.var)("AWS_ENDPOINT_URL_S3"))
            .or_else(|| (self.var)("AWS_ENDPOINT_URL"))
            .or_else(|| from_profile("endpoint_url"));
        Ok(AwsSettings {
            keys,
            region,
            endpoint,
        })
    }
}

/// One `[section]` of an AWS ini file: lower-cased keys and their values.
#[derive(Default)]
struct Section(HashMap<String, String>);

impl Section {
    fn keys(&self, path: &std::path::Path) -> Option<AwsKeys> {
        Some(AwsKeys {
            access_key_id: self.0.get("aws_access_key_id")?.clone(),
            secret_access_key: Secret::new(self.0.get("aws_secret_access_key")?.clone()),
            session_token: self.0.get("aws_session_token").cloned().map(Secret::new),
            origin: path.display().to_string(),
        })
    }
}

/// The sections of an AWS ini file. Comments (`#`, `;`) and indented continuation lines
/// (nested settings such as `s3 =` blocks) are skipped.
fn parse_ini(text: &str) -> HashMap<String, Section> {
    let mut out: HashMap<String, Section> = HashMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
            out.entry(name.clone()).or_default();
            current = Some(name);
        } else if let (Some(section), Some((k, v))) = (&current, line.split_once('=')) {
            if let Some(s) = out.get_mut(section) {
                s.0.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(
        vars: &[(&str, &str)],
        files: &[(&str, &str)],
        endpoint: Option<&str>,
    ) -> Result<AwsSettings> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let files: HashMap<PathBuf, String> = files
            .iter()
            .map(|(k, v)| (PathBuf::from(k), v.to_string()))
            .collect();
        let var = |k: &str| vars.get(k).cloned();
        let read = |p: &PathBuf| files.get(p).cloned();
        AwsEnv {
            var: &var,
            read: &read,
            home: Some("/h".into()),
        }
        .resolve(endpoint)
    }

    const CREDENTIALS: &str = "[default]\naws_access_key_id = AKDEF\naws_secret_access_key = sdef\n\
                               \n# a comment\n[ci]\naws_access_key_id=AKCI\naws_secret_access_key=sci\n\
                               aws_session_token = tok\n";
    const CONFIG: &str = "[default]\nregion = eu-west-1\n[profile ci]\nregion = eu-north-1\n\
                          endpoint_url = http://minio:9000\ns3 =\n  addressing_style = path\n\
                          [profile keys-here]\naws_access_key_id = AKCFG\n\
                          aws_secret_access_key = scfg\n";

    #[test]
    fn environment_first_then_files() {
        let files = [
            ("/h/.aws/credentials", CREDENTIALS),
            ("/h/.aws/config", CONFIG),
        ];
        let s = resolve(
            &[
                ("AWS_ACCESS_KEY_ID", "AKENV"),
                ("AWS_SECRET_ACCESS_KEY", "senv"),
                ("AWS_DEFAULT_REGION", "ap-south-1"),
            ],
            &files,
            None,
        )
        .unwrap();
        let k = s.keys.unwrap();
        assert_eq!(
            (k.access_key_id.as_str(), k.secret_access_key.expose()),
            ("AKENV", "senv")
        );
        assert_eq!(s.region, "ap-south-1");
        assert_eq!(s.endpoint, None);

        let s = resolve(&[], &files, None).unwrap();
        assert_eq!(s.keys.unwrap().access_key_id, "AKDEF");
        assert_eq!(s.region, "eu-west-1");

        let s = resolve(&[("AWS_PROFILE", "ci")], &files, None).unwrap();
        let k = s.keys.unwrap();
        assert_eq!(k.access_key_id, "AKCI");
        assert_eq!(k.session_token.as_ref().map(Secret::expose), Some("tok"));
        assert_eq!(s.region, "eu-north-1");
        assert_eq!(s.endpoint.as_deref(), Some("http://minio:9000"));
        // The option beats the environment, which beats the profile.
        let s = resolve(
            &[("AWS_PROFILE", "ci"), ("AWS_ENDPOINT_URL", "http://env:1")],
            &files,
            Some("http://opt:2"),
        )
        .unwrap();
        assert_eq!(s.endpoint.as_deref(), Some("http://opt:2"));

        let s = resolve(&[("AWS_PROFILE", "keys-here")], &files, None).unwrap();
        assert_eq!(s.keys.unwrap().access_key_id, "AKCFG");
    }

    #[test]
    fn no_keys_means_unsigned_but_a_missing_profile_is_an_error() {
        let s = resolve(&[], &[], None).unwrap();
        assert!(s.keys.is_none());
        assert_eq!(s.region, "us-east-1");
        let e = resolve(&[("AWS_PROFILE", "nope")], &[], None).unwrap_err();
        assert!(format!("{e}").contains("\"nope\""), "{e}");
        let e = resolve(&[("AWS_ACCESS_KEY_ID", "AK")], &[], None).unwrap_err();
        assert!(format!("{e}").contains("both"), "{e}");
    }

    #[test]
    fn keys_are_never_shown() {
        let s = resolve(
            &[
                ("AWS_ACCESS_KEY_ID", "AK"),
                ("AWS_SECRET_ACCESS_KEY", "hunter2"),
                ("AWS_SESSION_TOKEN", "tok3n"),
            ],
            &[],
            None,
        )
        .unwrap();
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("tok3n"),
            "{shown}"
        );
    }
}
