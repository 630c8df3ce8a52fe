// Prometheus metrics for node_exporter's textfile collector: items by state, relays by endpoint
// and outcome, relay latency, the oldest waiting item. The pipeline counts (since the process
// started, as counters do); run writes the file atomically (temporary name, rename) every
// run.poll_seconds in the daemon and at the end of a batch, so the collector never reads half a
// file. Format: the Prometheus text exposition format, version 0.0.4.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <utility>

#include "spool/store.h"

namespace pkirelay::agent {

class Metrics {
public:
    // One exchange that ended: its endpoint, outcome (answered, deferred, failed, review) and
    // how long it took from the send.
    void relayed(const std::string &endpoint, std::string_view outcome, double seconds);
    // The text, with the store's counts of now.
    std::string render(const spool::StoreStatus &status, spool::Millis now) const;

private:
    static constexpr std::array<double, 10> bounds = {0.005, 0.01, 0.025, 0.05, 0.1,
                                                      0.25,  0.5,  1,     2.5,  10};
    struct Histogram {
        std::array<std::uint64_t, bounds.size()> buckets{};
        std::uint64_t count = 0;
        double sum = 0;
    };
    std::map<std::pair<std::string, std::string>, std::uint64_t> relays_;
    std::map<std::string, Histogram> latency_;
};

// Writes text to path through a temporary file in the same folder and a rename; a failure is
// logged, never fatal (metrics must not stop relaying).
void writeMetricsFile(const std::string &path, const std::string &text);

} // namespace pkirelay::agent
