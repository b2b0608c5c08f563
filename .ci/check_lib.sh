# Shared by the install checks (.ci/readme_install_check.sh, .ci/sdk_install_check.sh); sourced, not run.
# Set CHECK_NAME first. Gives: $work (a temporary folder, removed on exit), $server_pid (set it to a server
# started in the background: it is stopped on exit), and fail MESSAGE [LOG].

work="$(mktemp -d)"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

fail() {  # fail MESSAGE [LOG]: say what failed, show the end of its log, stop
    echo "$CHECK_NAME: FAILED: $1" >&2
    if [ -n "${2:-}" ] && [ -f "$2" ]; then
        echo "--- last 60 lines of $(basename "$2") ---" >&2
        tail -n 60 "$2" >&2
    fi
    exit 1
}
