//! The images the `Containerfile` builds, checked without a registry.
//!
//! The build stage needs `docker.io/library/rust`, which test machines may not reach, so the
//! parts are proved separately, each against the real files:
//! - the Containerfile itself: one `FROM scratch` image per name that deploy/ and the webhook
//!   use, each running as a numeric non-root user, with an exec-form entrypoint at the binary
//!   the build stage compiles (the enforcer in the `sidecar` profile) and the version deploy/
//!   pulls;
//! - the root filesystems: `scripts/rootfs`, the very script the build stage runs, assembles a
//!   root around each workspace binary (`target/<profile>/`), and the binary runs `--version`
//!   from that root alone (its own loader, its own libraries, an empty environment);
//! - the images: `buildah` (scripts/test installs it; the test fails without it) builds each
//!   root into an image with the Containerfile's own final stages (only the build stage replaced
//!   by the roots) and runs it; its storage lives in a temporary directory, removed afterwards;
//! - transparent mode: the enforcer root applies its `init-redirect` rules with its own
//!   `iptables` in a fresh network namespace (needs root, as that init container does).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use tenantry_tests::repo_root;

// ---------------------------------------------------------------------------------------------
// The Containerfile.

/// One instruction, continuation lines joined and comments dropped.
#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
}

#[derive(Debug)]
struct Stage {
    base: String,
    name: String,
    instructions: Vec<Instruction>,
    /// The stage's source text, from its `FROM` line to the next stage's.
    source: String,
}

impl Stage {
    fn all(&self, keyword: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter(|i| i.keyword == keyword)
            .map(|i| i.args.as_str())
            .collect()
    }

    fn one(&self, keyword: &str) -> &str {
        let all = self.all(keyword);
        assert_eq!(
            all.len(),
            1,
            "stage `{}` should have exactly one {keyword}, has {all:?}",
            self.name
        );
        all[0]
    }

    /// `ENV K=V` settings.
    fn env(&self, key: &str) -> Option<String> {
        self.all("ENV").iter().find_map(|args| {
            args.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                .map(|v| v.trim_matches('"').to_string())
        })
    }

    fn entrypoint(&self) -> Vec<String> {
        let args = self.one("ENTRYPOINT");
        let parsed: Value = serde_json::from_str(args).unwrap_or_else(|e| {
            panic!(
                "stage `{}`: ENTRYPOINT {args} is not the exec (JSON) form, so it would need a \
                 shell the image does not have: {e}",
                self.name
            )
        });
        parsed
            .as_array()
            .unwrap_or_else(|| panic!("stage `{}`: ENTRYPOINT is not a list", self.name))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    }

    /// `LABEL k="v" …`.
    fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        for args in self.all("LABEL") {
            let mut rest = args.trim();
            while let Some((key, after)) = rest.split_once('=') {
                let after = after.trim_start();
                let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
                    let end = quoted.find('"').expect("unterminated label value");
                    (&quoted[..end], &quoted[end + 1..])
                } else {
                    after.split_once(char::is_whitespace).unwrap_or((after, ""))
                };
                labels.insert(key.trim().to_string(), value.to_string());
                rest = next.trim_start();
            }
        }
        labels
    }
}

/// The instructions in a piece of Containerfile: continuation lines joined (comment lines
/// between them dropped, as the builders do), comments and blank lines skipped.
fn instructions(text: &str) -> Vec<Instruction> {
    let mut out = vec![];
    let mut pending = String::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || (line.is_empty() && pending.is_empty()) {
            continue;
        }
        if let Some(continued) = line.strip_suffix('\\') {
            pending.push_str(continued);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let full = std::mem::take(&mut pending);
        let (keyword, args) = full.split_once(char::is_whitespace).unwrap_or((&full, ""));
        out.push(Instruction {
            keyword: keyword.to_uppercase(),
            args: args.split_whitespace().collect::<Vec<_>>().join(" "),
        });
    }
    assert!(pending.is_empty(), "a Containerfile stage ends in a `\\`");
    out
}

#[derive(Debug)]
struct Containerfile {
    /// `ARG NAME=default` before the first `FROM`.
    global_args: BTreeMap<String, String>,
    /// The text before the first `FROM` (comments and global `ARG`s).
    preamble: String,
    stages: Vec<Stage>,
}

impl Containerfile {
    fn read() -> Containerfile {
        let path = repo_root().join("Containerfile");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Containerfile::parse(&text)
    }

    fn parse(text: &str) -> Containerfile {
        // Split the text at each `FROM` that starts an instruction: the preamble, then one
        // piece of source per stage.
        let mut pieces = vec![String::new()];
        let mut continued = false;
        for line in text.lines() {
            let trimmed = line.trim();
            let is_from = trimmed
                .split_whitespace()
                .next()
                .is_some_and(|w| w.eq_ignore_ascii_case("FROM"));
            if is_from && !continued {
                pieces.push(String::new());
            }
            pieces.last_mut().unwrap().push_str(&format!("{line}\n"));
            // Comment lines do not end a continuation (the builders drop them first).
            if !trimmed.starts_with('#') {
                continued = trimmed.ends_with('\\');
            }
        }
        let preamble = pieces.remove(0);
        let mut global_args = BTreeMap::new();
        for arg in instructions(&preamble) {
            assert_eq!(arg.keyword, "ARG", "only ARG may precede the first FROM");
            let (name, default) = arg.args.split_once('=').unwrap_or((&arg.args, ""));
            global_args.insert(name.to_string(), default.to_string());
        }
        let stages = pieces
            .into_iter()
            .map(|source| {
                let mut instructions = instructions(&source);
                let from = instructions.remove(0);
                let words: Vec<&str> = from.args.split(' ').collect();
                let [base, as_, name] = words.as_slice() else {
                    panic!(
                        "every stage is named (`FROM image AS name`): FROM {}",
                        from.args
                    )
                };
                assert!(as_.eq_ignore_ascii_case("as"), "FROM {}", from.args);
                Stage {
                    base: base.to_string(),
                    name: name.to_string(),
                    instructions,
                    source,
                }
            })
            .collect();
        Containerfile {
            global_args,
            preamble,
            stages,
        }
    }

    fn stage(&self, name: &str) -> &Stage {
        self.stages
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("the Containerfile has no stage `{name}`"))
    }

    /// The image stages: everything `FROM scratch`.
    fn images(&self) -> Vec<&Stage> {
        self.stages.iter().filter(|s| s.base == "scratch").collect()
    }

    /// The shell commands of the build stage's `RUN`s, split at `&&`.
    fn build_commands(&self) -> Vec<Vec<String>> {
        self.stage("build")
            .all("RUN")
            .iter()
            .flat_map(|run| run.split("&&"))
            .map(|cmd| {
                cmd.split_whitespace()
                    .filter(|w| !w.starts_with("--mount="))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// How the build stage assembles an image's root: `scripts/rootfs FLAGS… BINARY OUTDIR`.
    fn rootfs_invocation(&self, image: &str) -> RootfsInvocation {
        let outdir = format!("/rootfs/{image}");
        let found: Vec<RootfsInvocation> = self
            .build_commands()
            .into_iter()
            .filter(|c| c.first().is_some_and(|w| w == "scripts/rootfs"))
            .filter(|c| c.last() == Some(&outdir))
            .map(|c| {
                let binary = c[c.len() - 2].clone();
                RootfsInvocation {
                    flags: c[1..c.len() - 2].to_vec(),
                    binary,
                }
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "the build stage should run scripts/rootfs once into {outdir}"
        );
        found.into_iter().next().unwrap()
    }
}

#[derive(Debug)]
struct RootfsInvocation {
    flags: Vec<String>,
    /// `target/<profile>/<binary>`
    binary: String,
}

impl RootfsInvocation {
    fn profile_and_binary(&self) -> (&str, &str) {
        let rest = self
            .binary
            .strip_prefix("target/")
            .unwrap_or_else(|| panic!("{} is not under target/", self.binary));
        rest.split_once('/')
            .unwrap_or_else(|| panic!("{} is not target/<profile>/<binary>", self.binary))
    }

    fn binary_name(&self) -> &str {
        self.profile_and_binary().1
    }

    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

// ---------------------------------------------------------------------------------------------
// The rest of the repository, as the Containerfile must match it.

/// Every `ghcr.io/tenantry/<name>:<tag>` in deploy/ (manifests) and webhook/src (the injected
/// sidecar's default), as (name, tag, where).
fn referenced_images() -> Vec<(String, String, PathBuf)> {
    const PREFIX: &str = "ghcr.io/tenantry/";
    let mut files = vec![];
    let mut dirs = vec![repo_root().join("deploy"), repo_root().join("webhook/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path
                .extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json" || e == "rs")
            {
                files.push(path);
            }
        }
    }
    let mut found = vec![];
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (at, _) in text.match_indices(PREFIX) {
            let reference: String = text[at + PREFIX.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "-_.:".contains(*c))
                .collect();
            let (name, tag) = reference.split_once(':').unwrap_or_else(|| {
                panic!(
                    "{}: `{PREFIX}{reference}` has no tag, so a node would pull whatever `latest` is",
                    file.display()
                )
            });
            found.push((name.to_string(), tag.to_string(), file.clone()));
        }
    }
    found
}

/// `key = "value"` in `[section]` of a Cargo manifest (enough TOML for our manifests).
fn manifest_values(manifest: &Path, section: &str, key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let mut current = String::new();
    let mut values = vec![];
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            current = line.to_string();
        } else if current == section
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            values.push(v.trim().trim_matches('"').to_string());
        }
    }
    values
}

/// The workspace's binaries, each with the package that builds it.
fn workspace_binaries() -> BTreeMap<String, String> {
    let root = repo_root().join("Cargo.toml");
    let members = manifest_values(&root, "[workspace]", "members");
    let members = members.first().expect("the root Cargo.toml lists members");
    let mut bins = BTreeMap::new();
    for member in members
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
    {
        let manifest = repo_root().join(member).join("Cargo.toml");
        let package = manifest_values(&manifest, "[package]", "name")
            .pop()
            .unwrap_or_else(|| panic!("{} has no package name", manifest.display()));
        for bin in manifest_values(&manifest, "[[bin]]", "name") {
            bins.insert(bin, package.clone());
        }
    }
    bins
}

// ---------------------------------------------------------------------------------------------
// (a) The Containerfile against deploy/, the webhook and the Cargo manifests.

#[test]
fn containerfile_builds_one_scratch_image_per_name_deploy_runs() {
    let file = Containerfile::read();

    let referenced = referenced_images();
    assert!(
        !referenced.is_empty(),
        "no ghcr.io/tenantry/ image in deploy/ or webhook/src"
    );
    let wanted: BTreeSet<&str> = referenced.iter().map(|(n, _, _)| n.as_str()).collect();
    let images: Vec<&Stage> = file.images();
    let built: BTreeSet<&str> = images.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        built, wanted,
        "the Containerfile's `FROM scratch` stages must be exactly the images deploy/ and the \
         webhook name"
    );
    let others: Vec<&str> = file
        .stages
        .iter()
        .filter(|s| s.base != "scratch")
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        others,
        ["build"],
        "besides the images there is one stage, `build`"
    );
    assert_eq!(
        file.stages[0].name, "build",
        "the build stage comes first; the image stages follow it"
    );

    // The build stage: the official Rust image (overridable), every build --locked.
    let rust_image = file
        .global_args
        .get("RUST_IMAGE")
        .expect("ARG RUST_IMAGE=… before the first FROM");
    assert!(
        rust_image.starts_with("docker.io/library/rust:"),
        "{rust_image}"
    );
    assert_eq!(file.stage("build").base, "${RUST_IMAGE}");
    let builds: Vec<Vec<String>> = file
        .build_commands()
        .into_iter()
        .filter(|c| c.starts_with(&["cargo".to_string(), "build".to_string()]))
        .collect();
    assert!(!builds.is_empty(), "the build stage runs no `cargo build`");
    let mut built_in: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for build in &builds {
        assert!(
            build.iter().any(|w| w == "--locked"),
            "{build:?} without --locked"
        );
        let profile = if build.iter().any(|w| w == "--release") {
            "release".to_string()
        } else if let Some(at) = build.iter().position(|w| w == "--profile") {
            build[at + 1].clone()
        } else {
            panic!("{build:?} builds the dev profile")
        };
        for (i, word) in build.iter().enumerate() {
            if word == "-p" || word == "--package" {
                built_in
                    .entry(profile.clone())
                    .or_default()
                    .insert(build[i + 1].clone());
            }
        }
    }

    // The version deploy/ pulls is the workspace's, and the images' label says it.
    let version = manifest_values(
        &repo_root().join("Cargo.toml"),
        "[workspace.package]",
        "version",
    )
    .pop()
    .unwrap();
    assert_eq!(
        file.global_args.get("VERSION"),
        Some(&version),
        "ARG VERSION is the workspace version"
    );
    for (name, tag, at) in &referenced {
        assert_eq!(
            tag,
            &version,
            "{} pulls {name}:{tag}, but the workspace (and the image) is {version}",
            at.display()
        );
    }

    let binaries = workspace_binaries();
    let repository = manifest_values(
        &repo_root().join("Cargo.toml"),
        "[workspace.package]",
        "repository",
    )
    .pop()
    .unwrap();
    for image in images {
        let name = &image.name;
        assert_eq!(
            image.one("COPY"),
            format!("--from=build /rootfs/{name}/ /"),
            "image `{name}` holds its root from the build stage and nothing else"
        );
        assert!(
            image.all("RUN").is_empty(),
            "image `{name}` has no shell to RUN with"
        );

        let user = image.one("USER");
        let ids: Vec<u32> = user
            .split(':')
            .map(|id| {
                id.parse().unwrap_or_else(|_| {
                    panic!(
                        "image `{name}`: USER {user} is not numeric, so Kubernetes cannot check \
                         runAsNonRoot against it"
                    )
                })
            })
            .collect();
        assert!(
            ids.len() == 2 && ids.iter().all(|&id| id != 0),
            "image `{name}`: USER {user} must be a non-root uid:gid"
        );

        let rootfs = file.rootfs_invocation(name);
        let (profile, binary) = rootfs.profile_and_binary();
        assert_eq!(
            image.entrypoint().first().map(String::as_str),
            Some(format!("/usr/local/bin/{binary}").as_str()),
            "image `{name}` starts the binary its root holds"
        );
        let package = binaries.get(binary).unwrap_or_else(|| {
            panic!("image `{name}`: no workspace package builds a binary `{binary}`")
        });
        assert!(
            built_in.get(profile).is_some_and(|p| p.contains(package)),
            "image `{name}` takes target/{profile}/{binary}, but no `cargo build` in that profile \
             builds {package} (built: {built_in:?})"
        );
        let expected_profile = if name == "tenantry-enforcer" {
            "sidecar"
        } else {
            "release"
        };
        assert_eq!(
            profile, expected_profile,
            "image `{name}` ships the {expected_profile} build"
        );

        let labels = image.labels();
        assert_eq!(
            labels
                .get("org.opencontainers.image.licenses")
                .map(String::as_str),
            Some("Apache-2.0")
        );
        assert_eq!(
            labels.get("org.opencontainers.image.source"),
            Some(&repository)
        );
        assert_eq!(
            labels.get("org.opencontainers.image.title"),
            Some(name),
            "image `{name}`"
        );
    }
    // The enforcer ships the profile the root manifest defines for it.
    assert!(
        std::fs::read_to_string(repo_root().join("Cargo.toml"))
            .unwrap()
            .contains("[profile.sidecar]")
    );
    // Transparent mode runs the enforcer image as the init container that calls iptables.
    assert!(
        file.rootfs_invocation("tenantry-enforcer")
            .has("--iptables")
    );
}

// ---------------------------------------------------------------------------------------------
// (b) Each root runs its binary with nothing from this machine.

/// The directory the workspace's binaries are built into, next to this test's own build.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps")
        .to_path_buf()
}

fn workspace_binary(name: &str) -> PathBuf {
    let bin = target_dir().join(name);
    assert!(
        bin.is_file(),
        "{} missing: build it with `cargo build --workspace --bins` (`cargo nextest run \
         --workspace` does)",
        bin.display()
    );
    bin
}

/// A directory under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "tenantry-images-{label}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn stdout_of(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Runs `scripts/rootfs` as the Containerfile does for `image`, on this build's binary.
fn assemble_root(file: &Containerfile, image: &str, into: &Path) -> (PathBuf, RootfsInvocation) {
    let rootfs = file.rootfs_invocation(image);
    let binary = workspace_binary(rootfs.binary_name());
    let out = Command::new(repo_root().join("scripts/rootfs"))
        .args(&rootfs.flags)
        .arg(&binary)
        .arg(into)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    stdout_of(&format!("scripts/rootfs for {image}"), &out);
    (binary, rootfs)
}

/// Every file and symlink under `root`, relative to it.
fn files_under(root: &Path) -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                dirs.push(path);
            } else {
                let relative = path.strip_prefix(root).unwrap();
                files.insert(format!("/{}", relative.display()));
            }
        }
    }
    files
}

/// The program interpreter (dynamic loader) an ELF64 executable names, if it has one.
fn elf_interpreter(binary: &Path) -> Option<String> {
    use std::io::Read;
    let mut head = vec![0; 64 * 1024];
    let n = std::fs::File::open(binary)
        .unwrap()
        .read(&mut head)
        .unwrap();
    let head = &head[..n];
    assert!(
        head.starts_with(b"\x7fELF\x02\x01"),
        "{} is not a little-endian ELF64 file",
        binary.display()
    );
    let u16_at = |at: usize| u16::from_le_bytes(head[at..at + 2].try_into().unwrap()) as usize;
    let u64_at = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).find_map(|i| {
        let ph = phoff + i * phentsize;
        // PT_INTERP = 3: its segment is the loader's path, NUL-terminated.
        (u32::from_le_bytes(head[ph..ph + 4].try_into().unwrap()) == 3).then(|| {
            let (offset, size) = (u64_at(ph + 8), u64_at(ph + 32));
            String::from_utf8(head[offset..offset + size - 1].to_vec()).unwrap()
        })
    })
}

/// Runs `program` (inside `root`) through the root's own loader, with the root's libraries
/// only, no ld.so.cache and an empty environment, after checking with the loader's `--list`
/// that every shared object resolves inside the root: the loader would otherwise fall back to
/// this machine's directories for one the root lacks. Returns the output and the shared objects
/// (loader included) the program loads, as paths in the root.
fn run_from_root(root: &Path, program: &str, args: &[&str]) -> (String, BTreeSet<String>) {
    let path = root.join(program.trim_start_matches('/'));
    let interpreter = elf_interpreter(&path)
        .unwrap_or_else(|| panic!("{program} is not dynamically linked; run it directly"));
    let loader = root.join(interpreter.trim_start_matches('/'));
    assert!(
        loader.is_file(),
        "{program} needs the loader {interpreter}, which the root lacks"
    );
    let mut lib_dirs: BTreeSet<PathBuf> = BTreeSet::new();
    for file in files_under(root) {
        if file.contains(".so") && file != interpreter {
            lib_dirs.insert(
                root.join(file.trim_start_matches('/'))
                    .parent()
                    .unwrap()
                    .into(),
            );
        }
    }
    let library_path = std::env::join_paths(&lib_dirs).unwrap();
    let loader_cmd = || {
        let mut cmd = Command::new(&loader);
        cmd.env_clear()
            .current_dir(root)
            .stdin(Stdio::null())
            .arg("--inhibit-cache")
            .arg("--library-path")
            .arg(&library_path);
        cmd
    };
    let listing = stdout_of(
        &format!("{program} --list"),
        &loader_cmd().arg("--list").arg(&path).output().unwrap(),
    );
    let mut loaded = BTreeSet::new();
    for line in listing.lines() {
        assert!(
            !line.contains("not found"),
            "{program}: {line} (the root lacks it)"
        );
        if let Some((_, resolved)) = line.split_once("=> ") {
            let resolved = resolved.split(" (").next().unwrap();
            let inside = Path::new(resolved).strip_prefix(root).unwrap_or_else(|_| {
                panic!(
                    "{program} loads {resolved} from this machine, not from the root:\n{listing}"
                )
            });
            loaded.insert(format!("/{}", inside.display()));
        }
    }
    let out = stdout_of(
        &format!("{program} {}", args.join(" ")),
        &loader_cmd().arg(&path).args(args).output().unwrap(),
    );
    (out, loaded)
}

/// Whether a (debug, unstripped) binary verifies TLS peers against the platform's roots.
fn uses_platform_roots(binary: &Path) -> bool {
    ["rustls_platform_verifier", "rustls_native_certs"]
        .iter()
        .any(|symbol| {
            Command::new("grep")
                .args(["-q", "-a", "-F", symbol])
                .arg(binary)
                .status()
                .unwrap()
                .success()
        })
}

#[test]
fn every_image_root_runs_its_binary_and_holds_nothing_else() {
    let file = Containerfile::read();
    let version = file.global_args["VERSION"].clone();
    let tmp = TempDir::new("roots");
    for image in file.images() {
        let name = &image.name;
        let root = tmp.0.join(name);
        let (binary, rootfs) = assemble_root(&file, name, &root);
        let bin_name = rootfs.binary_name();

        let (out, loaded) =
            run_from_root(&root, &format!("/usr/local/bin/{bin_name}"), &["--version"]);
        assert_eq!(out, format!("{bin_name} {version}\n"), "image `{name}`");

        // Nothing but the binary, the libraries and loader it loads, the accounts, the CA
        // bundle where the binary verifies servers against the platform's roots, and iptables
        // where the image runs it.
        let files = files_under(&root);
        let mut expected: BTreeSet<String> = [
            format!("/usr/local/bin/{bin_name}"),
            "/etc/passwd".into(),
            "/etc/group".into(),
        ]
        .into();
        expected.extend(loaded);
        let ca = "/etc/ssl/certs/ca-certificates.crt".to_string();
        assert_eq!(
            rootfs.has("--ca-certs"),
            uses_platform_roots(&binary),
            "image `{name}`: ship the CA bundle exactly when {bin_name} verifies TLS servers \
             against the platform's roots (rustls-platform-verifier / rustls-native-certs)"
        );
        if rootfs.has("--ca-certs") {
            expected.insert(ca.clone());
            let bundle = std::fs::read_to_string(root.join(ca.trim_start_matches('/'))).unwrap();
            assert!(bundle.contains("-----BEGIN CERTIFICATE-----"));
        }
        if rootfs.has("--iptables") {
            expected.insert("/usr/sbin/iptables".into());
            expected.insert("/usr/sbin/xtables-nft-multi".into());
            let (out, loaded) = run_from_root(&root, "/usr/sbin/iptables", &["--version"]);
            assert!(out.starts_with("iptables v"), "{out}");
            assert!(out.contains("nf_tables"), "{out}");
            expected.extend(loaded);
            // Its extensions are dlopen()ed, so --list cannot see them; the redirect test
            // proves these are the ones the rules need.
            expected.extend(
                files
                    .iter()
                    .filter(|f| f.contains("/xtables/libxt_") && f.ends_with(".so"))
                    .cloned(),
            );
        }
        assert_eq!(files, expected, "image `{name}` holds something else");
        for shell in ["/bin/sh", "/usr/bin/sh", "/bin/bash", "/bin/busybox"] {
            assert!(!files.contains(shell), "image `{name}` has a shell");
        }
        assert!(root.join("tmp").is_dir(), "image `{name}` has no /tmp");

        // The image's user is an account of its own.
        let uid = image.one("USER").split(':').next().unwrap().to_string();
        let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
        assert!(
            passwd
                .lines()
                .any(|l| l.starts_with("nonroot:") && l.split(':').nth(2) == Some(uid.as_str())),
            "image `{name}` runs as {uid}, which /etc/passwd does not name:\n{passwd}"
        );
        let group = std::fs::read_to_string(root.join("etc/group")).unwrap();
        assert!(group.lines().any(|l| l.starts_with("nonroot:x:65532:")));
    }
}

// ---------------------------------------------------------------------------------------------
// (c) Real images, built and run with buildah (no registry: everything is `FROM scratch`).

/// A buildah whose images, containers and temporary files live in one directory, removed with
/// everything in it when dropped: nothing reaches the machine's own container storage.
struct Buildah {
    dir: TempDir,
}

impl Buildah {
    fn new() -> Buildah {
        let works = Command::new("buildah")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            works,
            "buildah is not installed: `apt-get install -y buildah` (scripts/test installs it). \
             It builds and runs the images here without a daemon or a registry."
        );
        Buildah {
            dir: TempDir::new("buildah"),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("buildah");
        cmd.env("TMPDIR", &self.dir.0)
            .arg("--root")
            .arg(self.dir.0.join("storage"))
            .arg("--runroot")
            .arg(self.dir.0.join("run"))
            .args(["--storage-driver", "vfs"])
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, what: &str, args: &[&str]) -> String {
        let out = self.command().args(args).output().unwrap();
        stdout_of(&format!("buildah {what}"), &out)
    }
}

impl Drop for Buildah {
    fn drop(&mut self) {
        for args in [&["rm", "--all"][..], &["rmi", "--all", "--force"][..]] {
            let _ = self
                .command()
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[test]
#[cfg_attr(
    not(has_buildah),
    ignore = "needs root and buildah (scripts/test installs it)"
)]
fn images_build_from_the_roots_and_run_with_buildah() {
    let buildah = Buildah::new();
    let file = Containerfile::read();
    let version = file.global_args["VERSION"].clone();
    // The Containerfile with its build stage replaced by a stage holding the roots built here,
    // at the paths the image stages copy from; the image stages are taken verbatim.
    let mut containerfile = file.preamble.clone();
    containerfile.push_str("FROM scratch AS build\nCOPY rootfs/ /rootfs/\n\n");
    for image in file.images() {
        containerfile.push_str(&image.source);
    }
    let cf_path = buildah.dir.0.join("Containerfile");
    std::fs::write(&cf_path, &containerfile).unwrap();

    for image in file.images() {
        let name = &image.name;
        // A context per image, so the build stage holds only that image's root.
        let context = buildah.dir.0.join(format!("context-{name}"));
        let (_, rootfs) = assemble_root(&file, name, &context.join("rootfs").join(name));
        let tag = format!("localhost/{name}:{version}");
        buildah.run(
            &format!("build --target {name}"),
            &[
                "build",
                "--isolation",
                "chroot",
                "--pull=never",
                "--quiet",
                "-f",
                cf_path.to_str().unwrap(),
                "--target",
                name,
                "-t",
                &tag,
                context.to_str().unwrap(),
            ],
        );

        let inspected: Value =
            serde_json::from_str(&buildah.run("inspect", &["inspect", "--type", "image", &tag]))
                .unwrap();
        let config = &inspected["OCIv1"]["config"];
        assert_eq!(config["User"], image.one("USER"), "image `{name}`");
        assert_eq!(
            config["Entrypoint"],
            serde_json::json!(image.entrypoint()),
            "image `{name}`"
        );
        assert_eq!(
            config["Labels"]["org.opencontainers.image.version"], version,
            "image `{name}`"
        );

        let container = format!("tenantry-images-{name}");
        buildah.run(
            "from",
            &["from", "--pull=never", "--name", &container, &tag],
        );
        let mut command = vec!["run", "--isolation", "chroot", &container, "--"];
        let entrypoint = image.entrypoint();
        command.extend(entrypoint.iter().map(String::as_str));
        command.push("--version");
        let out = buildah.run(&format!("run {name} --version"), &command);
        assert_eq!(
            out,
            format!("{} {version}\n", rootfs.binary_name()),
            "image `{name}`"
        );

        if rootfs.has("--iptables") {
            // As its image's user, the sidecar cannot use the iptables it carries for the init
            // container. (Only a read is attempted: chroot isolation shares this machine's
            // network namespace.)
            let out = buildah
                .command()
                .args([
                    "run",
                    "--isolation",
                    "chroot",
                    &container,
                    "--",
                    "/usr/sbin/iptables",
                    "-t",
                    "nat",
                    "-S",
                ])
                .output()
                .unwrap();
            assert!(
                !out.status.success()
                    && String::from_utf8_lossy(&out.stderr).contains("must be root"),
                "image `{name}`: iptables as the image's user should be refused: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        buildah.run("rm", &["rm", &container]);
        buildah.run("rmi", &["rmi", "--force", &tag]);
    }
}

// ---------------------------------------------------------------------------------------------
// (d) Transparent mode: the enforcer image's init container, with the image's own iptables.

#[test]
#[cfg_attr(
    not(is_root),
    ignore = "needs root (a network namespace and NAT rules)"
)]
fn enforcer_root_applies_its_redirect_rules_with_its_own_iptables() {
    let is_root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    assert!(
        is_root,
        "needs root (a network namespace and chroot, as the init container has NET_ADMIN as \
         root): run the suite as root, as CI does"
    );
    let file = Containerfile::read();
    let image = file.stage("tenantry-enforcer");
    let path = image
        .env("PATH")
        .expect("the enforcer image sets PATH so `iptables` is found");
    let tmp = TempDir::new("redirect");
    let root = tmp.0.join("root");
    assemble_root(&file, "tenantry-enforcer", &root);
    // A container runtime provides /dev; a bare chroot gets this machine's /dev/null bound
    // over an empty file, in a mount namespace of its own.
    std::fs::create_dir_all(root.join("dev")).unwrap();
    std::fs::write(root.join("dev/null"), "").unwrap();
    let entrypoint = image.entrypoint().join(" ");
    let script = format!(
        r#"set -e
chroot=$(command -v chroot)
mount --bind /dev/null "$1/dev/null"
env -i PATH="$2" "$chroot" "$1" {entrypoint} init-redirect --app-ports 8080,9090 \
    --proxy-port 15001 --exclude-uid 1337 >/dev/null
env -i PATH="$2" "$chroot" "$1" iptables -t nat -S
"#
    );
    let out = Command::new("unshare")
        .args(["--net", "--mount", "--", "sh", "-c", &script, "sh"])
        .arg(&root)
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let rules = stdout_of("init-redirect in a network namespace", &out);
    for rule in [
        "-A PREROUTING -p tcp -j TENANTRY_INBOUND",
        "-A OUTPUT -p tcp -j TENANTRY_OUTPUT",
        "-A TENANTRY_INBOUND -p tcp -m tcp --dport 8080 -j REDIRECT --to-ports 15001",
        "-A TENANTRY_INBOUND -p tcp -m tcp --dport 9090 -j REDIRECT --to-ports 15001",
        "-A TENANTRY_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A TENANTRY_OUTPUT -o lo -j RETURN",
        "-A TENANTRY_OUTPUT -p tcp -m tcp --dport 8080 -j REDIRECT --to-ports 15001",
        "-A TENANTRY_OUTPUT -p tcp -m tcp --dport 9090 -j REDIRECT --to-ports 15001",
    ] {
        assert!(
            rules.lines().any(|l| l == rule),
            "missing `{rule}` in:\n{rules}"
        );
    }
}
