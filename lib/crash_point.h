// Named crash points for the guarantee tests (tests/integration/test_crash_points.py): in a
// build configured with -Dcrash_points=true, crashPoint("name") kills the process with SIGKILL
// when the environment variable PKIRELAY_CRASH_AT names that point, so a test can stop the
// pipeline exactly between two steps whose order the guarantees rest on (after a commit and
// before the acknowledgement, after an answer arrived and before it is recorded, ...) and check
// what a restart makes of it. PKIRELAY_PAUSE_AT instead stops the process there (SIGSTOP, the
// first time the point is reached), so a test can change the world under a live run (restart
// a server it is talking to) and let it go on with SIGCONT. In any other build the calls
// compile to nothing.
#pragma once

#include <string_view>

#ifdef PKIRELAY_CRASH_POINTS
#include <csignal>
#include <cstdlib>
#endif

namespace pkirelay {

inline void crashPoint([[maybe_unused]] std::string_view name) {
#ifdef PKIRELAY_CRASH_POINTS
    static const char *const at = std::getenv("PKIRELAY_CRASH_AT");
    if (at != nullptr && name == at)
        std::raise(SIGKILL);
    static const char *const pauseAt = std::getenv("PKIRELAY_PAUSE_AT");
    static bool paused = false; // once: the test waits for one stop, not for every pass
    if (pauseAt != nullptr && name == pauseAt && !paused) {
        paused = true;
        std::raise(SIGSTOP);
    }
#endif
}

} // namespace pkirelay
