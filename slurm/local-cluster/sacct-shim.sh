#!/bin/bash
# `sacct` for a Slurm without an accounting daemon (AccountingStorageType=accounting_storage/none).
# submitit runs `sacct -o JobID,State,NodeList --parsable2 -j ID ...` to learn that a job died without
# writing its result; the real sacct only answers "accounting storage is disabled" and the sweep driver
# would wait forever. This answers from `scontrol show job` instead (finished jobs stay there for
# MinJobAge seconds). With accounting enabled it runs the real sacct.
REAL=/usr/bin/sacct
if ! scontrol show config 2>/dev/null | grep -q '^AccountingStorageType *= *accounting_storage/none'; then
  exec "$REAL" "$@"
fi
fields="JobID,State,NodeList" ids=()
while [ $# -gt 0 ]; do
  case "$1" in
    -o|--format) fields="$2"; shift 2 ;;
    --format=*) fields="${1#*=}"; shift ;;
    -j|--jobs) IFS=, read -ra a <<<"$2"; ids+=("${a[@]}"); shift 2 ;;
    --jobs=*) IFS=, read -ra a <<<"${1#*=}"; ids+=("${a[@]}"); shift ;;
    *) shift ;;
  esac
done
IFS=, read -ra F <<<"$fields"
(IFS='|'; echo "${F[*]}")
for id in "${ids[@]}"; do
  scontrol show job -o "$id" 2>/dev/null | while read -r line; do
    declare -A kv=()
    for tok in $line; do kv[${tok%%=*}]="${tok#*=}"; done
    jid="${kv[JobId]}"
    if [ -n "${kv[ArrayJobId]:-}" ] && [ -n "${kv[ArrayTaskId]:-}" ]; then  # array task: 12_3 as sacct prints it
      t="${kv[ArrayTaskId]%%\%*}"
      if [[ "$t" == *[-,]* ]]; then jid="${kv[ArrayJobId]}_[$t]"; else jid="${kv[ArrayJobId]}_$t"; fi
    fi
    out=()
    for f in "${F[@]}"; do
      case "${f%%%*}" in
        JobID|JobIDRaw) out+=("$jid") ;;
        State) out+=("${kv[JobState]}") ;;
        NodeList) n="${kv[NodeList]}"; [ "$n" = "(null)" ] && n="None assigned"; out+=("$n") ;;
        JobName) out+=("${kv[JobName]}") ;;
        ExitCode) out+=("${kv[ExitCode]}") ;;
        *) out+=("") ;;
      esac
    done
    (IFS='|'; echo "${out[*]}")
  done
done
