//! Where the API is and which key to send: the command line, then `TASKFLEET_URL` and
//! `TASKFLEET_KEY`, then a profile in `<config dir>/taskfleet/config.toml` that `taskfleet
//! login` writes, readable by its owner only since it holds a key.

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

use crate::fail::Failure;

/// Where `make up` serves the API.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
pub const DEFAULT_PROFILE: &str = "default";

/// The API's address and the key to present, once resolved.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub key: String,
}

/// The profile file: named profiles, each an address and a key.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ProfileFile {
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    pub url: String,
    pub key: String,
}

/// The profile file's path, under `$XDG_CONFIG_HOME` (or `~/.config`).
pub fn profile_path() -> Result<PathBuf, Failure> {
    dirs::config_dir()
        .map(|dir| dir.join("taskfleet").join("config.toml"))
        .ok_or_else(|| Failure::usage("no config directory: set HOME or XDG_CONFIG_HOME"))
}

impl ProfileFile {
    /// The file as it is, or an empty one when there is none yet.
    pub fn load() -> Result<ProfileFile, Failure> {
        let path = profile_path()?;
        match fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|err| Failure::usage(format!("{} is not valid: {err}", path.display()))),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(ProfileFile::default()),
            Err(err) => Err(Failure::local(&format!("reading {}", path.display()), err)),
        }
    }

    /// Writes the file with mode 0600 (its directory 0700), replacing it whole.
    pub fn save(&self) -> Result<PathBuf, Failure> {
        let path = profile_path()?;
        let dir = path.parent().expect("the profile file is in a directory");
        fs::create_dir_all(dir)
            .map_err(|err| Failure::local("creating the config directory", err))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|err| Failure::local("protecting the config directory", err))?;
        let text = toml::to_string(self).expect("profiles serialise");
        // Written beside and renamed over, so a crash leaves the old file or the new one.
        let partial = path.with_extension("toml.partial");
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .map_err(|err| Failure::local(&format!("writing {}", partial.display()), err))?;
        // `mode` applies only to a file it creates; one left by a crash keeps its own.
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .and_then(|()| file.write_all(text.as_bytes()))
            .and_then(|()| file.sync_all())
            .map_err(|err| Failure::local(&format!("writing {}", partial.display()), err))?;
        fs::rename(&partial, &path)
            .map_err(|err| Failure::local(&format!("writing {}", path.display()), err))?;
        Ok(path)
    }
}

/// What the command line gave: flags only, the environment is read here.
pub struct Given {
    pub url: Option<String>,
    pub key: Option<String>,
    pub profile: Option<String>,
}

/// A variable of the environment, when set and not empty.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// Resolves the target. A profile named (`--profile`, else `TASKFLEET_PROFILE`) is used
/// whole, flags changing parts of it; otherwise flags, else `TASKFLEET_URL` and
/// `TASKFLEET_KEY`, else the default profile. A profile's key goes only to its own
/// address: an address from elsewhere needs its own key.
pub fn resolve(given: Given) -> Result<Target, Failure> {
    let trim = |url: String| url.trim_end_matches('/').to_owned();
    let (url, key, profile_name) = match given.profile.or_else(|| env("TASKFLEET_PROFILE")) {
        Some(name) => (given.url.map(trim), given.key, name),
        None => (
            given.url.or_else(|| env("TASKFLEET_URL")).map(trim),
            given.key.or_else(|| env("TASKFLEET_KEY")),
            DEFAULT_PROFILE.to_owned(),
        ),
    };
    if let (Some(url), Some(key)) = (&url, &key) {
        return Ok(Target {
            url: url.clone(),
            key: key.clone(),
        });
    }
    let file = ProfileFile::load()?;
    let stored = file.profiles.get(&profile_name);
    if stored.is_none() && profile_name != DEFAULT_PROFILE {
        return Err(Failure::usage(format!(
            "no profile '{profile_name}' in {}: create it with `taskfleet login --profile {profile_name}`",
            profile_path()?.display()
        )));
    }
    let url = url
        .or_else(|| stored.map(|p| trim(p.url.clone())))
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    if let Some(key) = key {
        return Ok(Target { url, key });
    }
    match stored {
        Some(stored) if trim(stored.url.clone()) == url => Ok(Target {
            url,
            key: stored.key.clone(),
        }),
        Some(stored) => Err(Failure::usage(format!(
            "no API key for {url}: profile '{profile_name}' holds the key of {}; set \
             TASKFLEET_KEY, or sign in there with `taskfleet login --url {url} --profile NAME`",
            stored.url
        ))),
        None => Err(Failure::usage(
            "no API key: set TASKFLEET_KEY, pass --key, or sign in once with `taskfleet login`",
        )),
    }
}
