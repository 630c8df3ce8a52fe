// `pkirelay run`: one agent per store, the event loop, signals, systemd readiness and the
// watchdog around the pipeline (pipeline.h). `run --once` is batch mode for cron and timers:
// the same stages, until nothing is left to do now, then the exit status of what happened.
#pragma once

#include <optional>
#include <string>

#include "config.h"
#include "pipeline.h"

namespace pkirelay::agent {

// Loads a configuration, printing every problem to stderr; nullopt when it is not valid.
std::optional<Config> loadOrReport(const std::string &path);

// Runs the daemon (once = false) or one batch. newStore: start even though the store is missing
// or empty while the watched folders hold pkirelay's answers (it was lost; see the README).
int commandRun(const std::string &cfgPath, bool once, bool newStore);

} // namespace pkirelay::agent
