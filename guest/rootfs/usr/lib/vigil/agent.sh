#!/bin/sh
# vigil guest agent (protocol 1), busybox ash.
#
# Talks to the host over the virtio-serial port named org.vigil.agent.0 (or the serial port
# vigil.agent=ttySN names, see below): newline-delimited
# JSON, one object per line. The host writes requests shaped exactly like
#   {"id":42,"cmd":"exec","argv":["uname","-r"]}
# (keys in the order id, cmd, arguments; ids are non-negative integers; strings only contain
# [A-Za-z0-9._/=:,+@-]), so requests are parsed with parameter expansion and `case`, and no
# process is forked on the ping/info path. Replies:
#   {"id":42,"ok":true,"result":{...}}  or  {"id":42,"ok":false,"error":"message"}
# The agent announces itself with {"event":"ready","agent":"vigil-agent","protocol":1} when it
# starts and again whenever it notices that the host side went away and came back (see main).
#
# Whatever the input, the agent answers and reads on: every request is checked against the
# exact shape above, loops are bounded, nothing from a request is ever evaluated or globbed.
# The agent-supervisor restarts it if it dies anyway.

PATH=/usr/bin:/usr/sbin:/bin:/sbin
export PATH
# Nothing here relies on pathname expansion except where it is switched on for one line.
set -f
umask 077
cd / || exit 1

PORT_NAME=org.vigil.agent.0
HELPERS=/usr/lib/vigil/bin
STATE=/run/vigil-agent
# Per stream cap of exec output, and the exec time limit.
LIMIT=65536
EXEC_TIMEOUT=30
# Commands (busybox applets) exec may run, besides the executables in $HELPERS.
ALLOWED=" uname cat dmesg ls ps sha256sum sync fsfreeze mount df free date head tail stat "
# A request line is a few hundred bytes; longer input is read (and rejected) in chunks of this
# size so a runaway line cannot grow a shell variable without bound.
MAX_LINE=16384
MAX_ARGV=64

mkdir -p "$STATE" || exit 1

log() {
	echo "vigil-agent: $*" >&2
}

# Sets $port to /dev/vportNpM for the port whose name is $PORT_NAME; waits up to 10 s for the
# virtio console driver to create it.
find_port() {
	tries=0
	while [ "$tries" -lt 100 ]; do
		set +f
		for f in /sys/class/virtio-ports/*/name; do
			[ -r "$f" ] || continue
			pname=
			read -r pname <"$f"
			if [ "$pname" = "$PORT_NAME" ]; then
				d=${f%/name}
				port=/dev/${d##*/}
				if [ -c "$port" ]; then
					set -f
					return 0
				fi
			fi
		done
		set -f
		tries=$((tries + 1))
		usleep 100000
	done
	return 1
}

# JSON string body of $1 in $esc: backslash and quote escaped, control characters dropped, and
# any other non-ASCII byte replaced by '?' so the line is always valid ASCII JSON.
json_escape() {
	esc=$1
	esc=${esc//\\/\\\\}
	esc=${esc//\"/\\\"}
	esc=${esc//[[:cntrl:]]/}
	esc=${esc//[!\ -~]/?}
}

# One reply line. A failed write means the port is gone: exit and let the supervisor restart.
send() {
	printf '%s\n' "$1" >&3 || exit 3
}

reply_ok() { # id result-json
	send "{\"id\":$1,\"ok\":true,\"result\":$2}"
}

reply_err() { # id message
	json_escape "$2"
	send "{\"id\":$1,\"ok\":false,\"error\":\"$esc\"}"
}

send_ready() {
	send '{"event":"ready","agent":"vigil-agent","protocol":1}'
}

cmd_info() { # id
	kernel='' up='' host='' boot=''
	read -r kernel </proc/sys/kernel/osrelease
	read -r up _ </proc/uptime
	read -r host </proc/sys/kernel/hostname
	read -r boot </proc/sys/kernel/random/boot_id
	case $up in *[!0-9.]* | '' | .* | *.*.*) up=0 ;; esac
	case $boot in *[!0-9a-f-]*) boot= ;; esac
	json_escape "$kernel"
	kernel=$esc
	json_escape "$host"
	reply_ok "$1" "{\"kernel\":\"$kernel\",\"uptime\":$up,\"hostname\":\"$esc\",\"agent\":\"vigil-agent\",\"protocol\":1,\"bootId\":\"$boot\"}"
}

# All processes in one awk pass over /proc/[0-9]*/stat (one fork for awk, not one per process).
# Each file is read whole with getline, so a comm containing a newline stays one record and a
# process that vanished between the glob and the read is skipped (busybox awk would abort on a
# missing input file given the usual way). comm is what lies between the first '(' and the last
# ')' (comm may itself contain ')').
ps_json() {
	set +f
	set -- /proc/[0-9]*/stat
	set -f
	awk '
	function esc(s) {
		gsub(/\\/, "\\\\", s)
		gsub(/"/, "\\\"", s)
		gsub(/[[:cntrl:]]/, "", s)
		gsub(/[\200-\377]/, "?", s)
		return s
	}
	BEGIN {
		n = 0
		for (i = 1; i < ARGC; i++) {
			rec = ""
			lines = 0
			while ((getline l < ARGV[i]) > 0 && lines < 8) {
				rec = lines ? rec "\n" l : l
				lines++
			}
			close(ARGV[i])
			if (!lines) continue
			open = index(rec, "(")
			close_at = 0
			rest = rec
			while ((k = index(rest, ")")) > 0) {
				close_at += k
				rest = substr(rest, k + 1)
			}
			if (open < 2 || close_at <= open) continue
			pid = substr(rec, 1, open - 2)
			split(substr(rec, close_at + 2), f, " ")
			if (pid !~ /^[0-9]+$/ || f[1] !~ /^[A-Za-z]$/ || f[2] !~ /^[0-9]+$/) continue
			printf "%s{\"pid\":%s,\"ppid\":%s,\"state\":\"%s\",\"comm\":\"%s\"}", (n++ ? "," : ""), pid, f[2], f[1], esc(substr(rec, open + 1, close_at - open - 1))
		}
	}' "$@"
}

cmd_ps() { # id
	if procs=$(ps_json); then
		reply_ok "$1" "{\"processes\":[$procs]}"
	else
		reply_err "$1" "cannot read the process list"
	fi
}

# Runs "$@" (already allow-listed) with a time limit, stdout and stderr captured in files in
# /run. RLIMIT_FSIZE (ulimit -f, in 512-byte blocks) caps each file a little above LIMIT, so a
# command that prints without end (cat /dev/zero) is stopped by SIGXFSZ instead of filling guest
# RAM, and no extra processes sit in pipes: under TCG every fork costs milliseconds.
cmd_exec_run() { # id argv...
	id=$1
	shift
	(
		ulimit -f $((LIMIT / 512 + 1))
		exec timeout "$EXEC_TIMEOUT" "$@" <"/dev/null" >"$STATE/out" 2>"$STATE/err" 3>&-
	)
	code=$?
	truncated=false
	encode_capture out
	stdout=$b64
	encode_capture err
	stderr=$b64
	: >"$STATE/out"
	: >"$STATE/err"
	reply_ok "$id" "{\"exitCode\":$code,\"stdout\":\"$stdout\",\"stderr\":\"$stderr\",\"truncated\":$truncated}"
}

# Base64 of $STATE/$1 in $b64, cut to LIMIT bytes (then truncated=true). The byte count comes
# from the base64 length, which saves a `wc` fork; an empty file costs no fork at all.
encode_capture() {
	b64=
	[ -s "$STATE/$1" ] || return 0
	b64=$(base64 -w0 "$STATE/$1")
	pad=0
	case $b64 in *==) pad=2 ;; *=) pad=1 ;; esac
	# base64 length is always a multiple of 4: the division is exact.
	if [ $((${#b64} / 4 * 3 - pad)) -gt "$LIMIT" ]; then
		truncated=true
		b64=$(head -c "$LIMIT" "$STATE/$1" | base64 -w0)
	fi
}

# exec arguments: ,"argv":["a","b",...]} -> positional parameters, then the allow-list check.
cmd_exec() { # id args
	id=$1
	list=$2
	case $list in
	',"argv":["'*'"]}') ;;
	*)
		reply_err "$id" "invalid arguments: expected \"argv\": a non-empty array of strings"
		return
		;;
	esac
	list=${list#',"argv":['}
	list=${list%']}'}
	set --
	while [ -n "$list" ]; do
		# Each element is "chars" followed by nothing or a comma and the next element.
		case $list in
		'"'*'"' | '"'*'",'*) ;;
		*)
			reply_err "$id" "invalid arguments: malformed argv"
			return
			;;
		esac
		list=${list#'"'}
		elem=${list%%'"'*}
		list=${list#"$elem"'"'}
		case $elem in
		*[!A-Za-z0-9._/=:,+@-]*)
			reply_err "$id" "invalid arguments: argv strings may only contain [A-Za-z0-9._/=:,+@-]"
			return
			;;
		esac
		if [ $# -ge "$MAX_ARGV" ]; then
			reply_err "$id" "invalid arguments: more than $MAX_ARGV argv elements"
			return
		fi
		set -- "$@" "$elem"
		case $list in
		'') ;;
		',"'*) list=${list#,} ;;
		*)
			reply_err "$id" "invalid arguments: malformed argv"
			return
			;;
		esac
	done
	name=$1
	# An allow-listed applet runs through PATH; a helper runs by its full path (given by its
	# name or its path). ".", ".." and nested paths are not helpers.
	case $name in
	*/*)
		base=${name#"$HELPERS"/}
		case $base in
		"$name" | */* | . | .. | '') prog= ;;
		*) prog=$HELPERS/$base ;;
		esac
		;;
	'' | . | ..) prog= ;;
	*)
		case $ALLOWED in
		*" $name "*) prog=$name ;;
		*) prog=$HELPERS/$name ;;
		esac
		;;
	esac
	case $prog in
	/*) [ -f "$prog" ] && [ -x "$prog" ] || prog= ;;
	esac
	if [ -z "$prog" ]; then
		reply_err "$id" "command \"$name\" is not allowed"
		return
	fi
	shift
	cmd_exec_run "$id" "$prog" "$@"
}

data_mounted() {
	while read -r _ mnt _; do
		[ "$mnt" = /data ] && return 0
	done </proc/mounts
	return 1
}

# fsfreeze is idempotent for the host: freezing a frozen /data or thawing a thawed one succeeds.
# Whether the agent froze it is remembered in /run (survives an agent restart, not a reboot).
cmd_fsfreeze() { # id args
	case $2 in
	',"action":"freeze"}') action=freeze ;;
	',"action":"thaw"}') action=thaw ;;
	*)
		reply_err "$1" "invalid arguments: expected \"action\": \"freeze\" or \"thaw\""
		return
		;;
	esac
	if ! data_mounted; then
		reply_ok "$1" '{"frozen":false,"mounted":false}'
		return
	fi
	if [ "$action" = freeze ]; then
		if msg=$(fsfreeze --freeze /data 2>&1) || [ -f "$STATE/frozen" ]; then
			: >"$STATE/frozen"
			reply_ok "$1" '{"frozen":true,"mounted":true}'
		else
			reply_err "$1" "cannot freeze /data: $msg"
		fi
	else
		# Thawing a filesystem that is not frozen fails with EINVAL: that is success here.
		fsfreeze --unfreeze /data 2>/dev/null
		rm -f "$STATE/frozen"
		reply_ok "$1" '{"frozen":false,"mounted":true}'
	fi
}

handle() { # line
	line=$1
	case $line in
	'{"id":'[0-9]*) ;;
	*)
		reply_err -1 "unknown command"
		return
		;;
	esac
	rest=${line#'{"id":'}
	id=${rest%%[!0-9]*}
	rest=${rest#"$id"}
	# JSON has no leading zeros, and ids beyond 2^53 would not survive the host's number type.
	case $id in
	0?*)
		reply_err -1 "unknown command"
		return
		;;
	esac
	if [ ${#id} -gt 15 ]; then
		reply_err -1 "unknown command"
		return
	fi
	case $rest in
	',"cmd":"'*'"'*'}') ;;
	*)
		reply_err "$id" "unknown command"
		return
		;;
	esac
	rest=${rest#',"cmd":"'}
	cmd=${rest%%'"'*}
	args=${rest#"$cmd"'"'}
	case $cmd in
	ping)
		reply_ok "$id" '{"pong":true}'
		;;
	info) cmd_info "$id" ;;
	ps) cmd_ps "$id" ;;
	exec) cmd_exec "$id" "$args" ;;
	fsfreeze) cmd_fsfreeze "$id" "$args" ;;
	*) reply_err "$id" "unknown command" ;;
	esac
}

# vigil.agent=ttySN on the kernel command line (N 1-9: ttyS0 is the console) puts the agent on
# that ISA serial port instead of the virtio port. A recording VM has no virtio-serial (QEMU only
# records -serial chardevs), so its agent is on COM2. Anything else there is ignored (logged).
serial=
read -r cmdline </proc/cmdline
for word in $cmdline; do
	case $word in
	vigil.agent=ttyS[1-9]) serial=${word#vigil.agent=} ;;
	vigil.agent=*) log "ignoring invalid ${word%%=*} (allowed: ttyS1 to ttyS9)" ;;
	esac
done

if [ -n "$serial" ]; then
	port=/dev/$serial
	[ -c "$port" ] || {
		log "no serial port $port"
		exit 1
	}
	# Raw bytes both ways: no echo, no line editing or CR/NL translation, no flow-control or
	# signal characters, no parity stripping; clocal so no modem line matters. Same framing as
	# virtio: one JSON line per message, ASCII only (exec output is base64).
	stty -F "$port" raw -echo -echoe -echok -echonl clocal cs8 -cstopb -parenb || {
		log "cannot set $port to raw mode"
		exit 1
	}
elif ! find_port; then
	log "no virtio-serial port named $PORT_NAME"
	exit 1
fi
# One read-write descriptor for the whole life of the agent (the port allows one opener).
exec 3<>"$port"

# A write to a virtio-serial port blocks while no host is connected, and a read returns end of
# file instead of blocking. So: announce (which waits for the host), then serve lines until end
# of file, which means the host closed its side; announce again, which waits for the next host.
#
# A serial port never reports the host going away (reads block, writes go out whether or not a
# host listens), so there the ready event is sent once; a host that connects later finds the
# agent by pinging it, as the host always does.
send_ready
while :; do
	line=
	if read -r -n "$MAX_LINE" line <&3; then
		handle "$line"
	elif [ -n "$serial" ]; then
		# Not expected on a tty (no hang-up with clocal); do not spin if it happens anyway.
		usleep 100000
	else
		# A partial line at end of file belonged to a host that is gone: drop it.
		send_ready
	fi
done
