# Sourced by the scripts: `timed <label> <command...>` runs the command and
# prints how long it took; where SYNCBN_TIMES names a file (.ci/run sets it),
# it also appends "<label>\t<seconds>" there for the summary.
timed() {
  local label=$1 start end status=0
  shift
  start=$(date +%s)
  "$@" || status=$?
  end=$(date +%s)
  echo "time: $label $((end - start)) s"
  if [[ -n ${SYNCBN_TIMES:-} ]]; then
    printf '%s\t%s\n' "$label" "$((end - start))" >>"$SYNCBN_TIMES"
  fi
  return "$status"
}
