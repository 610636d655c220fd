//! Models already in the Hugging Face hub cache, found offline.
//!
//! `ORG/NAME` is the snapshot `refs/main` points at: `<cache>/models--ORG--NAME/snapshots/<rev>/`
//! (the layout `huggingface-cli download ORG/NAME` leaves: files there are links into `blobs/`).
//! `ORG/NAME/FILE` is one file of that snapshot, such as one `.gguf` of a GGUF repository that
//! holds several. The cache is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`. Nothing is downloaded:
//! a model missing from the cache is an error that names where it looked.

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

/// A model named by hub repository, as `ORG/NAME` or `ORG/NAME/FILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRef<'a> {
    pub org: &'a str,
    pub name: &'a str,
    /// A path inside the snapshot (e.g. `model-q4_k_m.gguf`); `None` for the snapshot itself.
    pub file: Option<&'a str>,
}

impl<'a> RepoRef<'a> {
    /// `Some` when `spec` has the shape of a repository id (two or more `/`-separated parts,
    /// hub-legal organisation and repository names, no `..`), `None` otherwise.
    pub fn parse(spec: &'a str) -> Option<Self> {
        let mut parts = spec.splitn(3, '/');
        let org = parts.next().filter(|p| legal_name(p))?;
        let name = parts.next().filter(|p| legal_name(p))?;
        let file = parts.next();
        if let Some(f) = file {
            let ok = !f.is_empty() && f.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
            if !ok {
                return None;
            }
        }
        Some(RepoRef { org, name, file })
    }

    /// `ORG/NAME`: what a loaded model from the cache is called.
    pub fn repo_id(&self) -> String {
        format!("{}/{}", self.org, self.name)
    }

    /// The repository's folder in a cache: `models--ORG--NAME`.
    pub fn folder(&self) -> String {
        format!("models--{}--{}", self.org, self.name)
    }
}

/// Hub names: letters, digits, `-`, `_`, `.`; not starting with `.` or `-`.
fn legal_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(['.', '-'])
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The hub cache directory the environment names (see the module docs), if any is named.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("HF_HUB_CACHE") {
        return Some(dir);
    }
    if let Some(home) = var("HF_HOME") {
        return Some(home.join("hub"));
    }
    if let Some(xdg) = var("XDG_CACHE_HOME") {
        return Some(xdg.join("huggingface").join("hub"));
    }
    var("HOME").map(|h| h.join(".cache").join("huggingface").join("hub"))
}

/// The path `repo` names in the cache at `cache`: the `refs/main` snapshot, or a file in it.
pub fn resolve_in(cache: &Path, repo: &RepoRef) -> Result<PathBuf> {
    let repo_dir = cache.join(repo.folder());
    let how = "nothing is downloaded: fetch it with `huggingface-cli download` where the hub is \
               reachable, or point HF_HUB_CACHE / HF_HOME at a cache that has it";
    if !repo_dir.is_dir() {
        return Err(ModelError::file(
            &repo_dir,
            format!(
                "'{}' is not in the Hugging Face cache ({how})",
                repo.repo_id()
            ),
        ));
    }
    let refs_main = repo_dir.join("refs").join("main");
    let rev = std::fs::read_to_string(&refs_main).map_err(|e| {
        ModelError::file(
            &refs_main,
            format!(
                "cannot read the revision of '{}' ({e}); snapshots present: {}",
                repo.repo_id(),
                snapshots(&repo_dir)
            ),
        )
    })?;
    let rev = rev.trim();
    if !legal_name(rev) {
        return Err(ModelError::file(
            &refs_main,
            format!("not a revision: {rev:?}"),
        ));
    }
    let snapshot = repo_dir.join("snapshots").join(rev);
    if !snapshot.is_dir() {
        return Err(ModelError::file(
            &snapshot,
            format!("refs/main names revision {rev}, but its snapshot is missing ({how})",),
        ));
    }
    let Some(file) = repo.file else {
        return Ok(snapshot);
    };
    let path = snapshot.join(file);
    if !path.exists() {
        return Err(ModelError::file(
            &path,
            format!(
                "'{file}' is not in the cached snapshot of '{}' (a broken link means its blob \
                 was never downloaded; {how})",
                repo.repo_id()
            ),
        ));
    }
    Ok(path)
}

/// `ORG/NAME` when `path` lies in a snapshot of a hub cache (`…/models--ORG--NAME/snapshots/
/// <rev>/…`), so a model loaded from the cache is called by its repository, not its revision.
pub fn repo_name(path: &Path) -> Option<String> {
    let mut parts = path.components().rev().map(|c| c.as_os_str().to_str());
    // Skip to the `snapshots` folder that has a revision below it.
    for (below, part) in parts.by_ref().enumerate() {
        if part? == "snapshots" && below > 0 {
            break;
        }
    }
    let (org, name) = parts.next()??.strip_prefix("models--")?.split_once("--")?;
    (legal_name(org) && legal_name(name)).then(|| format!("{org}/{name}"))
}

/// The snapshot folders of a cached repository, for error messages.
fn snapshots(repo_dir: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(repo_dir.join("snapshots"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// `repo` in the cache the environment names.
pub fn resolve(repo: &RepoRef) -> Result<PathBuf> {
    let cache = cache_dir().ok_or_else(|| {
        ModelError::Invalid(format!(
            "cannot look up '{}' in the Hugging Face cache: none of HF_HUB_CACHE, HF_HOME, \
             XDG_CACHE_HOME or HOME is set",
            repo.repo_id()
        ))
    })?;
    resolve_in(&cache, repo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_paths_are_named_by_their_repository() {
        let snap = Path::new("/c/hub/models--Qwen--Qwen2.5-0.5B/snapshots/0123abcd");
        assert_eq!(repo_name(snap).as_deref(), Some("Qwen/Qwen2.5-0.5B"));
        assert_eq!(
            repo_name(&snap.join("sub/model.gguf")).as_deref(),
            Some("Qwen/Qwen2.5-0.5B")
        );
        for other in [
            "/c/hub/models--Qwen--Qwen2.5-0.5B/snapshots",
            "/c/models/qwen2.5-coder-1.5b-instruct/model.gguf",
            "/c/hub/datasets--a--b/snapshots/0123",
            "/c/hub/models--nodash/snapshots/0123",
        ] {
            assert_eq!(repo_name(Path::new(other)), None, "{other}");
        }
    }

    #[test]
    fn repo_ids_parse_and_paths_do_not() {
        let r = RepoRef::parse("Qwen/Qwen2.5-1.5B-Instruct").unwrap();
        assert_eq!(
            (r.org, r.name, r.file),
            ("Qwen", "Qwen2.5-1.5B-Instruct", None)
        );
        assert_eq!(r.folder(), "models--Qwen--Qwen2.5-1.5B-Instruct");
        let g = RepoRef::parse("Qwen/Qwen2.5-1.5B-Instruct-GGUF/q4_k_m.gguf").unwrap();
        assert_eq!(g.file, Some("q4_k_m.gguf"));
        assert_eq!(g.repo_id(), "Qwen/Qwen2.5-1.5B-Instruct-GGUF");
        for not_a_repo in [
            "qwen2.5-1.5b-instruct",
            "/abs/path",
            "./models/x",
            "../x/y",
            "org/../etc",
            "org/name/",
            "org/name/../../x",
            "org//name",
            "org/na me",
            "-org/name",
        ] {
            assert_eq!(RepoRef::parse(not_a_repo), None, "{not_a_repo}");
        }
    }
}
