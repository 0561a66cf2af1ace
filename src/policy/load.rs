//! Reads a policy directory into a [`PolicySet`]: which files belong to the set, in which
//! order, and the set's version (a sha256 over every file it was built from). It runs the
//! passes in order: `compile` (which runs `parse`), then `warn`; `PolicySet::new` builds
//! the index.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::compile;
use super::error::{LoadError, LoadErrors};
use super::model::{SourceFile, is_policy_file_name};
use super::set::PolicySet;
use super::warn;

/// Loads every policy file directly in `dir`, in file-name order, with the list files they
/// name. Fails whole: any error and no set is returned.
pub fn load_dir(dir: &Path) -> Result<PolicySet, LoadErrors> {
    load_dir_after(dir, None)
}

/// [`load_dir`], reusing what can be reused from the serving set (its compiled regexes).
pub fn load_dir_after(dir: &Path, previous: Option<&PolicySet>) -> Result<PolicySet, LoadErrors> {
    let entries =
        std::fs::read_dir(dir).map_err(|source| LoadErrors(vec![LoadError::Dir { dir: dir.to_path_buf(), source }]))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| LoadErrors(vec![LoadError::Dir { dir: dir.to_path_buf(), source }]))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        // Follow symlinks (ConfigMaps are made of them); skip directories.
        if is_policy_file_name(&name) && std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
            names.push(name);
        }
    }
    names.sort();

    let mut hasher = Sha256::new();
    let mut errors = Vec::new();
    let mut sources = Vec::with_capacity(names.len());
    for name in &names {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                hash_file(&mut hasher, "policy", name, text.as_bytes());
                sources.push(SourceFile { path, text });
            }
            Err(source) => errors.push(LoadError::Read { file: path, source }),
        }
    }
    if !errors.is_empty() {
        return Err(LoadErrors(errors));
    }

    let mut files: Vec<PathBuf> = sources.iter().map(|s| s.path.clone()).collect();
    let mut read_list = |path: &Path| {
        let text = std::fs::read_to_string(path)?;
        let rel = path.strip_prefix(dir).unwrap_or(path).to_string_lossy().into_owned();
        hash_file(&mut hasher, "list", &rel, text.as_bytes());
        files.push(path.to_path_buf());
        Ok(text)
    };
    let compiled = compile::compile(dir, &sources, &mut read_list, previous)?;
    // Only a set that compiled is checked for what is probably a mistake.
    let warnings = warn::set_warnings(&compiled.rules, &sources);
    let version = hex::encode(hasher.finalize());
    Ok(PolicySet::new(compiled.rules, compiled.default, warnings, version, files))
}

/// Hashes one file so that no two different sets of (kind, name, content) collide by
/// concatenation: each part is length-prefixed.
fn hash_file(hasher: &mut Sha256, kind: &str, name: &str, content: &[u8]) {
    for part in [kind.as_bytes(), name.as_bytes(), content] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
}
