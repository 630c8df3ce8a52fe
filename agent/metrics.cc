// Metrics (metrics.h): counting, the text exposition format, and the atomic file write.
#include "metrics.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace pkirelay::agent {

namespace {

// Label values are escaped as the exposition format requires: backslash, quote, newline.
std::string label(std::string_view v) {
    std::string out;
    for (char c : v) {
        if (c == '\\' || c == '"')
            out += '\\';
        if (c == '\n') {
            out += "\\n";
            continue;
        }
        out += c;
    }
    return out;
}

} // namespace

void Metrics::relayed(const std::string &endpoint, std::string_view outcome, double seconds) {
    ++relays_[{endpoint, std::string(outcome)}];
    auto &h = latency_[endpoint];
    for (std::size_t i = 0; i < bounds.size(); ++i)
        if (seconds <= bounds[i])
            ++h.buckets[i];
    ++h.count;
    h.sum += seconds;
}

std::string Metrics::render(const spool::StoreStatus &status, spool::Millis now) const {
    std::string out;
    out += "# HELP pkirelay_items Items in the store, by state.\n# TYPE pkirelay_items gauge\n";
    for (const auto &[state, n] : status.counts)
        out += fmt::format("pkirelay_items{{state=\"{}\"}} {}\n", spool::stateName(state), n);
    out += "# HELP pkirelay_relays_total Exchanges with endpoints that ended, by outcome.\n"
           "# TYPE pkirelay_relays_total counter\n";
    for (const auto &[key, n] : relays_)
        out += fmt::format("pkirelay_relays_total{{endpoint=\"{}\",outcome=\"{}\"}} {}\n",
                           label(key.first), label(key.second), n);
    out += "# HELP pkirelay_relay_seconds Time from sending a request to its outcome.\n"
           "# TYPE pkirelay_relay_seconds histogram\n";
    for (const auto &[endpoint, h] : latency_) {
        const std::string ep = label(endpoint);
        for (std::size_t i = 0; i < bounds.size(); ++i)
            out += fmt::format("pkirelay_relay_seconds_bucket{{endpoint=\"{}\",le=\"{}\"}} {}\n",
                               ep, bounds[i], h.buckets[i]);
        out += fmt::format("pkirelay_relay_seconds_bucket{{endpoint=\"{}\",le=\"+Inf\"}} {}\n", ep,
                           h.count);
        out += fmt::format("pkirelay_relay_seconds_sum{{endpoint=\"{}\"}} {}\n", ep, h.sum);
        out += fmt::format("pkirelay_relay_seconds_count{{endpoint=\"{}\"}} {}\n", ep, h.count);
    }
    out += "# HELP pkirelay_oldest_waiting_seconds Age of the oldest item not yet answered "
           "(0 when none).\n# TYPE pkirelay_oldest_waiting_seconds gauge\n";
    const double age =
        status.oldestWaitingId ? static_cast<double>(now - status.oldestWaitingSince) / 1000 : 0;
    out += fmt::format("pkirelay_oldest_waiting_seconds {}\n", age);
    return out;
}

void writeMetricsFile(const std::string &path, const std::string &text) {
    const std::filesystem::path target(path);
    const std::string temp =
        (target.parent_path() / ("." + target.filename().string() + ".pkirelay-tmp")).string();
    std::FILE *f = std::fopen(temp.c_str(), "w");
    bool ok = f != nullptr && std::fwrite(text.data(), 1, text.size(), f) == text.size();
    if (f != nullptr)
        ok = std::fclose(f) == 0 && ok;
    if (!ok || std::rename(temp.c_str(), path.c_str()) != 0) {
        spdlog::warn("- metrics: cannot write {}: {}", path, std::strerror(errno));
        std::remove(temp.c_str());
    }
}

} // namespace pkirelay::agent
