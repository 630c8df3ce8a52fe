// `pkirelay run` (run.h). The lock follows the database file itself (its inode), not the path
// that names it, so two configurations naming one store through different paths (a symlink, a
// relative path) cannot run side by side and send the same items twice.
#include "run.h"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <map>
#include <optional>
#include <vector>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

#include "lib/classify.h"
#include "lib/file_io.h"
#include "lib/loop/event_loop.h"
#include "lib/sources/directory.h"
#include "lib/loop/signals.h"
#include "lib/text.h"
#include "lib/transports/http.h"
#include "metrics.h"

namespace pkirelay::agent {

std::optional<Config> loadOrReport(const std::string &path) {
    try {
        return loadConfig(path);
    } catch (const ConfigError &e) {
        for (const auto &p : e.problems())
            fmt::print(stderr, "{}\n", p);
        fmt::print(stderr, "pkirelay: configuration {} is not valid\n", path);
        return std::nullopt;
    }
}

namespace {

// One run at a time per store (DESIGN, "Batch by cron"): flock on the database file itself,
// which the kernel releases when the process dies, so a crash never leaves a stale lock. SQLite
// locks with fcntl(2), which flock(2) does not interfere with on a local file system. The
// descriptor stays open for the life of the process: closing any descriptor of the file would
// drop SQLite's own fcntl locks.
std::optional<Fd> takeRunLock(const std::string &storePath, int &exitCode) {
    // Created empty when missing (0600), so that the lock is taken before anything reads the
    // store; an empty file is what a new store starts from.
    Fd fd(::open(storePath.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    if (fd.get() < 0) {
        fmt::print(stderr, "pkirelay: cannot open {}: {}\n", storePath, std::strerror(errno));
        exitCode = errno == ENOSPC ? ExitTempFail : ExitCantCreat;
        return std::nullopt;
    }
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK) {
            fmt::print(stderr,
                       "pkirelay: another pkirelay run is using {}; not starting a second\n",
                       storePath);
            exitCode = ExitTempFail;
        } else {
            fmt::print(stderr, "pkirelay: cannot lock {}: {}\n", storePath, std::strerror(errno));
            exitCode = ExitCantCreat;
        }
        return std::nullopt;
    }
    // SQLite names its -wal and -shm files after the path: a second name for the same file
    // (a hard link) would see another write-ahead log, and so not what the other name committed.
    struct stat st {};
    if (::fstat(fd.get(), &st) == 0 && st.st_nlink > 1) {
        fmt::print(stderr,
                   "pkirelay: {} has {} hard links; a store must have one name (SQLite keeps its "
                   "write-ahead log beside the name): remove the other links\n",
                   storePath, st.st_nlink);
        exitCode = ExitConfig;
        return std::nullopt;
    }
    return fd;
}

void printReport(const RunReport &r, std::string_view what) {
    spdlog::info("- {}: {} received, {} duplicate, {} quarantined, {} unmatched, {} still "
                 "arriving; {} relayed: {} answered, {} deferred, {} failed; {} response file(s) "
                 "written; {} waiting; {} source error(s), {} delivery error(s)",
                 what, r.received, r.duplicates, r.quarantined, r.unmatched, r.stillArriving,
                 r.relayed, r.answered, r.deferred, r.failed, r.delivered, r.waiting,
                 r.sourceErrors, r.deliveryErrors);
}

// systemd's notification socket (sd_notify(3)); harmless without systemd. The watchdog is fed
// from the loop, so a loop that hangs is restarted by systemd.
class Systemd {
public:
    explicit Systemd(EventLoop &loop) : loop_(loop) {
        std::uint64_t usec = 0;
        if (::sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
            intervalMs_ = static_cast<EventLoop::Millis>(usec / 2000);
            feed();
        }
    }
    void notify(const std::string &state) { ::sd_notify(0, state.c_str()); }

private:
    void feed() {
        ::sd_notify(0, "WATCHDOG=1");
        loop_.after(std::max<EventLoop::Millis>(intervalMs_, 1), [this] { feed(); });
    }
    EventLoop &loop_;
    EventLoop::Millis intervalMs_ = 0;
};

} // namespace

namespace {

// A response beside the request it answers, as pkirelay writes them (the request's name with
// the answer's extension): its presence says an earlier store relayed that request, so a
// missing store was lost rather than never made. Responses without their request (answers
// carried back on a stick, for matching) say nothing of the kind.
std::optional<std::string> answerInFolders(const Config &config) {
    ClassifyLimits limits;
    limits.maxSize = static_cast<std::size_t>(config.settings.maxMessageSize);
    const auto stem = [](const std::string &name) {
        return name.substr(0, name.rfind('.'));
    };
    for (const auto &source : config.sources) {
        try {
            // Only a stem that two files share can be a request with its answer beside it:
            // those files are read and classified, each once, no other (a first start with a
            // backlog of 10,000 requests read and classified each of them once more, for
            // nothing). The responses folder may be the request folder itself.
            const Directory requestDir = Directory::open(source.path);
            std::optional<Directory> responseDir;
            if (source.responses != source.path)
                responseDir.emplace(Directory::open(source.responses));
            const Directory *answersIn = responseDir ? &*responseDir : &requestDir;
            std::vector<const Directory *> dirs{&requestDir};
            if (responseDir)
                dirs.push_back(&*responseDir);
            std::map<std::string, std::vector<std::pair<const Directory *, std::string>>> byStem;
            for (const Directory *dir : dirs)
                for (const auto &entry : dir->list())
                    if (entry.type == DirEntry::Type::Regular && !looksTemporary(entry.name))
                        byStem[stem(entry.name)].emplace_back(dir, entry.name);
            for (const auto &[name, files] : byStem) {
                if (files.size() < 2)
                    continue;
                bool request = false, answer = false;
                for (const auto &[dir, file] : files) {
                    const FileRead read = dir->read(file, limits.maxSize);
                    if (read.tooLarge)
                        continue;
                    const auto c = classify(read.bytes, limits);
                    const auto *m = std::get_if<Message>(&c);
                    if (m && m->isRequest())
                        request = request || dir == &requestDir;
                    else if (m)
                        answer = answer || dir == answersIn;
                }
                if (request && answer)
                    return source.responses + "/" + name + ".*";
            }
        } catch (const IoError &) {
            // A folder that is not there (yet) holds no answers.
        }
    }
    return std::nullopt;
}

// The store for `run`. A first start creates it; but a store that is missing while the folders
// hold pkirelay's answers, or that was emptied, was lost: starting afresh would relay every
// request kept in the folders again, so that needs --new-store (issue: DESIGN's "nothing
// answered twice").
spool::Store openRunStore(const Config &config, bool newStore) {
    const std::string &path = config.settings.storePath;
    if (newStore)
        return spool::Store::open(path, spool::OpenMode::CreateIfMissing);
    try {
        return spool::Store::open(path, spool::OpenMode::MustExist);
    } catch (const spool::StoreMissing &e) {
        // Missing, empty or without a schema: a first start (perhaps one killed before its
        // first commit), unless the folders say an earlier store relayed what is in them.
        if (auto answer = answerInFolders(config))
            throw spool::StoreMissing(fmt::format("{}; and {} is an answer beside its request, "
                                                  "which an earlier store relayed",
                                                  e.what(), printable(*answer)));
    }
    return spool::Store::open(path, spool::OpenMode::CreateIfMissing);
}

} // namespace

int commandRun(const std::string &cfgPath, bool once, bool newStore) {
    auto config = loadOrReport(cfgPath);
    if (!config)
        return ExitConfig;
    for (const auto &w : environmentWarnings(*config))
        spdlog::warn("- {}", w);
    for (const auto &e : config->endpoints)
        if (!e.verifyTls)
            spdlog::warn("- endpoint {} ({}): TLS verification is OFF (verify_tls = false)", e.name,
                         redactUrl(e.url));

    EventLoop loop;
    bool stopping = false;
    bool reload = false;
    // Signals arrive as loop events, so a stage in a transaction finishes it first.
    SignalEvents signals(loop, {SIGTERM, SIGINT, SIGHUP}, [&](int sig) {
        if (sig == SIGHUP) {
            reload = true;
        } else {
            stopping = true;
            loop.stop();
        }
    });
    ::signal(SIGPIPE, SIG_IGN);

    // The lock first: nothing reads the store while another run may be writing it.
    int lockStatus = ExitOk;
    auto lock = takeRunLock(config->settings.storePath, lockStatus);
    if (!lock)
        return lockStatus;
    auto store = openRunStore(*config, newStore);
    httpGlobalInit();

    Systemd systemd(loop);
    Pipeline pipeline(*config, store, loop, systemClock, once);
    // The store's name must go on naming the file this run locked and opened: an operator's rm
    // (or a backup moved over it) leaves SQLite writing into a file nobody will read again, and
    // lets a second run lock the new one. Stop before anything more is acknowledged into it.
    pipeline.setStoreCheck([&lock, path = config->settings.storePath] {
        struct stat named {
        }, held{};
        if (::stat(path.c_str(), &named) == 0 && ::fstat(lock->get(), &held) == 0 &&
            named.st_dev == held.st_dev && named.st_ino == held.st_ino)
            return;
        throw spool::StoreMissing(
            fmt::format("{} is no longer the store this run opened (deleted or replaced while "
                        "it ran); stopped before acknowledging anything more into it",
                        path));
    });
    pipeline.start();
    systemd.notify("READY=1");
    if (!once)
        spdlog::info("- running: {} source(s), {} endpoint(s), store {}", config->sources.size(),
                     config->endpoints.size(), config->settings.storePath);

    const auto writeMetrics = [&] {
        if (!config->settings.metricsFile.empty())
            writeMetricsFile(config->settings.metricsFile,
                             pipeline.metrics().render(store.status(systemClock()), systemClock()));
    };
    // Batch mode on a terminal: a progress line while a long batch is worked through.
    const bool progress = once && ::isatty(STDERR_FILENO) == 1;
    EventLoop::TimerId progressTimer = 0;
    std::function<void()> showProgress = [&] {
        const RunReport &r = pipeline.report();
        fmt::print(stderr, "\r{} stored, {} relayed, {} answered, {} written, {} in flight ",
                   r.received + r.duplicates + r.quarantined, r.relayed, r.answered, r.delivered,
                   pipeline.inFlight());
        std::fflush(stderr);
        progressTimer = loop.after(500, showProgress);
    };
    if (progress)
        progressTimer = loop.after(500, showProgress);

    // Daemon mode: a summary when something happened, at most every poll interval.
    EventLoop::TimerId summary = 0;
    std::function<void()> summarize = [&] {
        writeMetrics();
        RunReport r = pipeline.report();
        r.waiting = store.countWaiting();
        if (!r.quiet())
            printReport(r, "since the last summary");
        systemd.notify(
            fmt::format("STATUS={} waiting, {} in flight", r.waiting, pipeline.inFlight()));
        pipeline.resetReport();
        summary = loop.after(config->settings.pollSeconds * 1000, summarize);
    };
    if (!once)
        summary = loop.after(config->settings.pollSeconds * 1000, summarize);

    while (!loop.stopped()) {
        loop.turn();
        if (reload) {
            reload = false;
            systemd.notify("RELOADING=1");
            // Keep the old configuration if the new one is invalid (DESIGN, "Operating it").
            try {
                Config fresh = loadConfig(cfgPath);
                if (fresh.settings.storePath != config->settings.storePath)
                    spdlog::warn("- reload: store.path cannot change while running; keeping {}",
                                 config->settings.storePath);
                fresh.settings.storePath = config->settings.storePath;
                config = std::move(fresh);
                pipeline.reconfigure(*config);
                spdlog::info("- reloaded {}", cfgPath);
            } catch (const ConfigError &e) {
                for (const auto &p : e.problems())
                    spdlog::error("- reload: {}", p);
                spdlog::error("- reload failed; keeping the running configuration");
            }
            systemd.notify("READY=1");
        }
        if (once && pipeline.finished())
            break;
    }
    if (summary != 0)
        loop.cancel(summary);
    if (progressTimer != 0) {
        loop.cancel(progressTimer);
        fmt::print(stderr, "\n");
    }
    if (stopping) {
        systemd.notify("STOPPING=1");
        spdlog::info("- stopping on signal");
    }
    pipeline.stop(stopping ? "stopping on signal" : "batch done");
    writeMetrics();
    RunReport r = pipeline.report();
    r.waiting = store.countWaiting();
    if (once) {
        printReport(r, "pass done");
        return stopping ? ExitTempFail : r.exitCode();
    }
    return ExitOk;
}

} // namespace pkirelay::agent
