// The directory source: request files in a watched folder (removable media, a spool folder that
// users or cron jobs write into). inotify says which names changed (a file closed after writing,
// a file moved in, the folder itself deleted or unmounted); a full rescan, asked for by the
// pipeline on a timer, stays the truth, so a missed event (or a network file system without
// inotify) only delays an item.
//
// What it trusts: the configured folder path. What it does not: every name and every byte in
// the folder. Files are opened relative to the folder, never through a symlink, read with a size
// bound, and classified before anything else happens to them. Names that look temporary (leading
// dot, *.tmp, *.part, *~) are never read; a file still being written (open for writing, or
// truncated and modified within the settle time) is looked at again later, so a file copied in
// slowly is stored once, whole. The folder is not held open between looks: a stick can be
// unmounted at any time, and a folder that is missing or disappears is waited for quietly and
// watched again when it returns.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <unordered_map>

#include "lib/file_io.h"
#include "lib/mail/mime.h"
#include "lib/sources/source.h"

namespace pkirelay {

struct DirectorySourceConfig {
    std::string name;
    std::string path;      // the watched folder
    std::string responses; // where its responses go (files here that are ours are skipped)
    enum class After { Keep, Move, Delete } after = After::Keep;
    std::string moveTo; // for After::Move
    std::uint64_t maxMessageSize = 4 * 1024 * 1024;
    std::int64_t settleMs = 60'000;          // a truncated file younger than this is waited for
    std::function<std::int64_t()> wallClock; // Unix ms, compared with file mtimes
    std::int64_t rearmMs = 1000;             // how often a missing folder is looked for
    // S/MIME on disk: a whole mail (.eml) or an S/MIME entity (.p7m) is read with lib/mail
    // (layers decrypted and verified as configured) and must hold exactly one request.
    mail::SmimeConfig smime;
    // Hooks for a source built on this one (the media source, lib/sources/media.h). ignore:
    // names that are never read as inputs (manifests); when one is written, the folder is
    // looked at again whole. check: called for each file read, before it is classified.
    std::function<bool(std::string_view name)> ignore;
    enum class Verdict {
        Accept, // classify and store it as usual
        Wait,   // not yet (its manifest has not come): looked at again later, not stored
        Reject, // quarantine it with the reason
        Skip,   // not this source's (a file of the other leg in a shared folder): passed by,
                // neither stored nor counted as still arriving
    };
    std::function<std::pair<Verdict, std::string>(const std::string &name, ByteView bytes)> check;
};

// Temporary-looking names (leading dot, *.tmp, *.part, *~): other tools' and pkirelay's own
// files that are not finished yet.
bool looksTemporary(std::string_view name);

class DirectorySource final : public Source {
public:
    explicit DirectorySource(DirectorySourceConfig config);
    ~DirectorySource() override;

    const std::string &name() const override { return config_.name; }
    void attach(EventLoop &loop, std::function<void()> wake) override;
    void detach() override;
    Taken take(Ledger &ledger, std::size_t maxItems, std::size_t maxBytes, bool full) override;
    std::vector<Ack> acknowledge(const std::vector<std::uint64_t> &tokens) override;
    bool available() const override { return available_; }

private:
    void arm();
    void folderGone(const char *why);
    void readEvents();
    void recheckLater(const std::string &name, std::int64_t delayMs);
    bool considerName(const std::string &name, Ledger &ledger, const Directory &dir, Taken &taken,
                      std::size_t &bytes);
    mail::Limits mimeLimits() const;
    Classification fromMail(ByteView bytes) const;

    struct Pending {
        std::string name;
        FileIdentity identity;
        bool removable = true; // false: too large to store whole, stays where it is
    };

    DirectorySourceConfig config_;
    EventLoop *loop_ = nullptr;
    std::function<void()> wake_;
    Fd inotify_;
    int watch_ = -1;
    bool available_ = false;
    bool everArmed_ = false;
    bool rescan_ = true;
    EventLoop::TimerId rearmTimer_ = 0;
    std::set<std::string> dirty_;   // names events reported, not yet looked at
    std::set<std::string> writing_; // created or modified, not yet closed
    std::set<std::string> warned_;  // names already warned about (a symlink, unreadable)
    // Names whose file is stored (or ours, or too large) as it is now: a rescan does not read
    // them again while their identity is unchanged.
    std::unordered_map<std::string, FileIdentity> settled_;
    std::map<std::uint64_t, Pending> pending_;           // by token
    std::map<std::string, EventLoop::TimerId> rechecks_; // names to look at again, by name
    std::uint64_t nextToken_ = 1;
};

} // namespace pkirelay
