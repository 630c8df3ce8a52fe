// Named crash points for the guarantee tests (tests/integration/test_crash_points.py): in a
// build configured with -Dcrash_points=true, crashPoint("name") kills the process with SIGKILL
// when the environment variable PKIRELAY_CRASH_AT names that point, so a test can stop the
// pipeline exactly between two steps whose order the guarantees rest on (after a commit and
// before the acknowledgement, after an answer arrived and before it is recorded, ...) and check
// what a restart makes of it. In any other build the calls compile to nothing.
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
#endif
}

} // namespace pkirelay
