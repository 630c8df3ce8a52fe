// libFuzzer driver for the configuration parser (agent/config.h parseConfig): any text must give
// a valid Config or a ConfigError with at least one problem, never a crash or an exception of
// another type (toml++'s own errors included). A valid Config must hold what the rest of the
// agent relies on: every source routed to an endpoint that exists. Built only with clang (meson
// -Dfuzz=true); see tests/fuzz/README.md.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "agent/config.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
    using namespace pkirelay::agent;
    const std::string_view text(reinterpret_cast<const char *>(data), size);
    try {
        const Config config = parseConfig(text, "/nonexistent/fuzz.toml");
        if (config.sources.empty() || config.endpoints.empty())
            std::abort();
        for (const auto &source : config.sources) {
            if (source.path.empty() || source.responses.empty())
                std::abort();
            if (!source.endpoint.empty() && !config.endpoint(source.endpoint))
                std::abort();
            for (const auto &[kind, name] : source.routes)
                if (!config.route(source.name, kind))
                    std::abort();
        }
        for (const auto &endpoint : config.endpoints)
            (void)endpoint.toHttp();
        (void)config.retryPolicy();
    } catch (const ConfigError &e) {
        if (e.problems().empty())
            std::abort();
        for (const auto &problem : e.problems())
            if (problem.empty())
                std::abort();
    }
    // Any other exception escapes, and libFuzzer reports it as a crash.
    return 0;
}
