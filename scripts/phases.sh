# Sourced by .ci/run and tests/run as `source scripts/phases.sh NAME`: `phase WHAT` prints, for
# the phase since the last call, its wall time, the CPU time of the programs it ran (user +
# system, from /proc: the children this shell has waited for) and the machine's load at its
# end, with the totals since the source, prefixed by NAME.
phases_name=$1
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ print int(($16 + $17) / hz) }' /proc/$$/stat; }
t0=$(date +%s) t=$t0 c0=$(cpu_s) c=$c0
phase() {
  local now cn; now=$(date +%s) cn=$(cpu_s)
  echo "$phases_name: $1: $((now - t)) s wall, $((cn - c)) s CPU, load $(cut -d' ' -f1 /proc/loadavg) (total $((now - t0)) s wall, $((cn - c0)) s CPU)" >&2
  t=$now c=$cn
}
