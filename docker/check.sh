#!/usr/bin/env bash
# The container check CI runs after the test suite (.ci/run), and anyone can run
# from the repository root on a Linux machine with podman or docker:
#
#   bash docker/check.sh
#
# 1. builds the CPU image (docker/Dockerfile.cpu);
# 2. runs a one-step quickstart in it with no network at all (the embedded
#    model and task need none);
# 3. brings up docker/compose.yaml's CPU profile (a Ray head and one worker),
#    submits a 2-step `aharl train quickstart` from the host with
#    `ray job submit`, and checks the job succeeded and its run directory
#    (metrics of steps 1 and 2, the final model) is in the `runs` volume;
# 4. removes every container, volume and image it made, also on failure.
#
# Where no container registry is reachable (these CI machines), set
# AHARL_LOCAL_BASE=1: podman is installed and a local stand-in for the public
# Python base is built first (../shared/containers). Prints each phase's time.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
shared=${AHARL_SHARED:-$repo/../shared}
image=localhost/aharl:cpu-check
project=aharl-check
build_args=()
compose=()
engine=
t_start=$(date +%s)
phase() { echo "== $1 ($(( $(date +%s) - t_start ))s)"; }

cleanup() {
  status=$?
  phase "cleanup"
  [ ${#compose[@]} -eq 0 ] || "${compose[@]}" down -v -t 10 >/dev/null 2>&1 || true
  [ -n "$engine" ] || exit $status
  "$engine" rm -f aharl-check-offline >/dev/null 2>&1 || true
  "$engine" volume rm -f "${project}_runs" "${project}_hf-cache" >/dev/null 2>&1 || true
  "$engine" rmi -f "$image" >/dev/null 2>&1 || true
  [ "${AHARL_LOCAL_BASE:-0}" != 1 ] || "$engine" rmi -f localhost/python:aharl-check >/dev/null 2>&1 || true
  left=$("$engine" ps -a --format '{{.Names}}' | grep -c "^$project" || true)
  images=$("$engine" images -q "$image" | wc -l)
  echo "containers left: $left; images left: $images"
  if [ -n "${store:-}" ]; then  # local-base mode: the whole store goes, build steps and base included
    "$engine" rmi -a -f >/dev/null 2>&1 || true
    rm -rf "$store"
  fi
  echo "docker/check.sh: $([ $status -eq 0 ] && echo passed || echo FAILED) in $(( $(date +%s) - t_start ))s"
  exit $status
}
trap cleanup EXIT


if [ "${AHARL_LOCAL_BASE:-0}" = 1 ]; then
  phase "podman and the local stand-in base"
  # shellcheck source=/dev/null
  . "$shared/containers/setup-podman.sh"
  set -euo pipefail  # the setup script turns these off as it ends
  engine=$(command -v podman)
  # A storage of its own: podman keeps every build step as an image (GBs of
  # them here); removing the whole store afterwards leaves nothing behind.
  store=${CONTAINERS_WORK:-/tmp/containers-work}/aharl-check-store
  # A store left by a check that was killed (its cleanup never ran) holds GBs of build steps: start empty.
  rm -rf "$store"
  mkdir -p "$store"
  # The image build keeps GBs of build steps (the torch and vLLM layers): say a full disk now, not mid-build.
  free_gb=$(df -Pk "$store" | awk 'NR == 2 { print int($4 / 1048576) }')
  echo "free disk under $store: ${free_gb} GB"
  [ "$free_gb" -ge 20 ] || { echo "docker/check.sh: needs 20 GB free under $store for the image build, has ${free_gb} GB (set CONTAINERS_WORK to a roomier disk)"; exit 1; }
  printf '[storage]\ndriver = "overlay"\ngraphroot = "%s/graph"\nrunroot = "%s/run"\n' "$store" "$store" > "$store/storage.conf"
  export CONTAINERS_STORAGE_CONF=$store/storage.conf
  "$shared/containers/make-local-base.sh" bookworm localhost/python:aharl-check python3,python3-venv
  build_args+=(--build-arg BASE=localhost/python:aharl-check)
  # torch's CPU build lies on this machine's disk (PIP_FIND_LINKS); mounted for the build only.
  links=${PIP_FIND_LINKS:-$(python3 -m pip config get global.find-links 2>/dev/null || true)}
  if [ -n "$links" ] && [ -d "$links" ]; then
    build_args+=(--build-arg TORCH_INDEX= --build-arg "PIP_FIND_LINKS=$links" -v "$links:$links:ro")
  fi
fi
engine=${CONTAINER_ENGINE:-$(command -v podman || command -v docker || true)}
[ -n "$engine" ] || { echo "docker/check.sh: needs podman or docker (or AHARL_LOCAL_BASE=1 to install podman)"; exit 1; }
if [ "$(basename "$engine")" = podman ]; then
  compose=(podman-compose)
  build_args+=(--network=host)
else
  compose=(docker compose)
fi
compose+=(-p "$project" -f docker/compose.yaml --profile cpu)

export RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0
RAY_AUTH_TOKEN=$(python3 -c "import secrets; print(secrets.token_hex(32))")
export RAY_AUTH_TOKEN AHARL_IMAGE=$image AHARL_WORKER_CPUS=2
ray_cli=${RAY_CLI:-$repo/.venv/bin/ray}
[ -x "$ray_cli" ] || ray_cli=$(command -v ray || true)
[ -n "$ray_cli" ] || { echo "docker/check.sh: needs Ray's CLI on the host for ray job submit (make env)"; exit 1; }


if [ -n "${AHARL_CHECK_PREBUILT:-}" ]; then
  # iterating on this script or the compose file: an image already built from docker/Dockerfile.cpu
  phase "using $AHARL_CHECK_PREBUILT as $image (no build)"
  "$engine" tag "$AHARL_CHECK_PREBUILT" "$image"
else
  phase "build $image"
  t0=$(date +%s)
  "$engine" build "${build_args[@]}" -t "$image" -f docker/Dockerfile.cpu . > /tmp/aharl-check-build.log 2>&1 \
    || { tail -40 /tmp/aharl-check-build.log; echo "docker/check.sh: the CPU image did not build (log above)"; exit 1; }
  echo "built in $(( $(date +%s) - t0 ))s; $("$engine" image inspect "$image" --format '{{.Size}}' | awk '{printf "%.2f GB", $1/1e9}')"
fi
[ "$("$engine" run --rm "$image" id -u)" != 0 ] || { echo "docker/check.sh: the image runs as root"; exit 1; }
# .dockerignore: the build context holds the code, not the venv, the runs, git or caches.
probe=$(mktemp -d)
printf 'FROM %s\nCOPY . /tmp/context\nRUN cd /tmp/context && for p in .git .venv runs .gpu .pytest_cache tests; do if [ -e "$p" ]; then echo "build context holds $p"; exit 1; fi; done && test -f aharl/config.py\n' "$image" > "$probe/Dockerfile"
"$engine" build "${build_args[@]}" -q -t localhost/aharl:context-probe -f "$probe/Dockerfile" . >/dev/null \
  || { echo "docker/check.sh: the build context is not what .dockerignore promises"; exit 1; }
"$engine" rmi -f localhost/aharl:context-probe >/dev/null; rm -rf "$probe"
echo "build context: no .git, .venv, runs or caches"

phase "one-step quickstart in the image, no network"
"$engine" run --rm --name aharl-check-offline --network=none --shm-size 2g "$image" \
  aharl train quickstart learner.max_steps=1 eval.num_questions=4 logging.run_name=offline 2>&1 | tail -5
# (a failed run exits non-zero: set -o pipefail ends the check here)

phase "compose: a Ray head and one worker"
"${compose[@]}" up -d
deadline=$(( $(date +%s) + 300 ))
until "$ray_cli" job list --address http://127.0.0.1:8265 >/dev/null 2>&1; do
  [ "$(date +%s)" -lt "$deadline" ] || { "${compose[@]}" logs --tail 40 || true; echo "docker/check.sh: the Ray head's job API did not answer within 300 s"; exit 1; }
  sleep 3
done
alive_nodes() { "$ray_cli" list nodes --address http://127.0.0.1:8265 --filter state=ALIVE --format json 2>/dev/null | python3 -c "import json, sys; print(len(json.load(sys.stdin)))" 2>/dev/null || echo 0; }
until [ "$(alive_nodes)" -ge 2 ]; do
  [ "$(date +%s)" -lt "$deadline" ] || { "${compose[@]}" logs --tail 40 || true; echo "docker/check.sh: the worker did not join the head within 300 s"; exit 1; }
  sleep 3
done
echo "head and worker up"

phase "ray job submit from the host: 2 training steps"
submitted=0
for _ in $(seq 30); do  # the job agent starts after the API answers: Ray refuses (creates no job) until then
  out=$("$ray_cli" job submit --address http://127.0.0.1:8265 -- \
        aharl train quickstart learner.max_steps=2 eval.num_questions=4 \
        logging.output_dir=/home/aharl/runs logging.run_name=compose-job 2>&1) && { submitted=1; break; }
  grep -q "No available agent" <<<"$out" || break
  sleep 5
done
tail -8 <<<"$out"
[ $submitted = 1 ] && grep -q "succeeded" <<<"$out" || { echo "docker/check.sh: the job did not succeed (output above)"; exit 1; }

phase "the run directory in the runs volume"
"$engine" run --rm -i -v "${project}_runs:/runs:ro" "$image" python3 - <<'PY'
import json, pathlib, sys
run = pathlib.Path("/runs/compose-job")
rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
steps = [row["step"] for row in rows if "reward/total" in row]
worst = max(row["sync/logp_diff"] for row in rows if "reward/total" in row)
assert steps == [1, 2], f"steps logged: {steps}"
assert (run / "final" / "config.json").is_file(), "no final model"
print(f"runs volume holds {run}: steps {steps}, sync/logp_diff <= {worst:.1e}, final model saved")
PY
