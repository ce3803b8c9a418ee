#!/usr/bin/env bash
# One node of a multi-node run (started by tools/slurm/train.sbatch through srun, one task per node):
#   node.sh ACCELERATE_CONFIG NUM_NODES GPUS_PER_NODE [training overrides...]
# Runs `accelerate launch` for this node and turns SIGUSR1/SIGTERM into a checkpoint: the signal is
# passed to the training processes only (they save at the next step boundary and exit 75), while the
# launcher ignores it (torch's launcher would otherwise SIGKILL its workers 30 s after forwarding a
# SIGTERM, perhaps mid-checkpoint). Exit code 75 means "stopped with a checkpoint: requeue me".
set -uo pipefail
config=$1 nodes=$2 gpus=$3
shift 3

# The launcher ignores both signals (an ignored signal stays ignored across exec; torch's launcher
# handles only SIGINT here); the training processes install their own handlers.
export TORCHELASTIC_SIGNALS_TO_HANDLE=SIGINT
(
    trap '' USR1 TERM
    exec accelerate launch --config_file "$config" \
        --num_machines "$nodes" --num_processes "$(( nodes * gpus ))" --machine_rank "${SLURM_NODEID:-0}" \
        --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" \
        -m neuracore.ml.train "$@"
) &
launcher=$!

stopped=""
stop() {
    stopped=$1
    pkill "-$1" -P "$launcher" 2>/dev/null   # the launcher's children: this node's training processes
}
trap 'stop USR1' USR1
trap 'stop TERM' TERM

while true; do
    wait "$launcher"
    rc=$?
    kill -0 "$launcher" 2>/dev/null || break   # `wait` returns early when a trapped signal arrives
done
if [ -n "$stopped" ]; then
    echo "node ${SLURM_NODEID:-0}: stopped by SIG$stopped (launcher exit $rc)" >&2
    exit 75
fi
exit "$rc"
