#!/usr/bin/env bash
# Part of the issue 9 diagnosis (docs/architecture.md, "Where the journal flushes wait"): records
# ftrace events (ext4 fsync enter/exit, block requests, syncfs, scheduler) for SECONDS into OUTFILE.
# Needs root and tracefs (mount -t tracefs nodev /sys/kernel/tracing). Analyse with fsync-trace.py OUTFILE.
# usage: fsync-trace.sh OUTFILE SECONDS: ftrace events of fsync/flush/syncfs for SECONDS
set -eu
T=/sys/kernel/tracing
EVENTS="ext4/ext4_sync_file_enter ext4/ext4_sync_file_exit ext4/ext4_sync_fs block/block_rq_issue block/block_rq_complete syscalls/sys_enter_syncfs syscalls/sys_exit_syncfs sched/sched_switch sched/sched_wakeup"
old_kb=$(cat $T/buffer_size_kb)
echo 0 > $T/tracing_on; echo > $T/trace
echo 65536 > $T/buffer_size_kb
for e in $EVENTS; do echo 1 > $T/events/$e/enable; done
echo 1 > $T/tracing_on
sleep $2
echo 0 > $T/tracing_on
cat $T/trace > $1
for e in $EVENTS; do echo 0 > $T/events/$e/enable; done
echo > $T/trace
echo "$old_kb" > $T/buffer_size_kb
