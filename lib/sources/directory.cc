// The directory source (directory.h): inotify events, rescans, bounded reads, classification,
// and acknowledgement only of the file that was stored.
#include "lib/text.h"
#include "lib/sources/directory.h"

#include "lib/crash_point.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace pkirelay {

namespace {

// What the watch asks for: a writer closing a file, a file moved in (complete by then), names
// appearing or changing (a writer is still at work), names leaving, and the folder's own end.
constexpr std::uint32_t watchMask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_MODIFY |
                                    IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF | IN_MOVE_SELF |
                                    IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK;

// While a stored file is being acknowledged it is held under ".NAME" + ackSuffix (see
// acknowledge()); a run killed in that moment leaves it so, and the next rescan gives it its
// name back. Not temporarySuffix: temporary response files are deleted at start, and this one
// holds a request the user may want moved, not deleted.
constexpr std::string_view ackSuffix = ".pkirelay-ack";

std::optional<std::string> heldName(std::string_view name) {
    if (name.size() > 1 + ackSuffix.size() && name.starts_with('.') && name.ends_with(ackSuffix))
        return std::string(name.substr(1, name.size() - 1 - ackSuffix.size()));
    return std::nullopt;
}

} // namespace

bool looksTemporary(std::string_view name) {
    return name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".part") ||
           name.ends_with('~');
}

DirectorySource::DirectorySource(DirectorySourceConfig config) : config_(std::move(config)) {
    if (!config_.wallClock)
        throw std::invalid_argument("DirectorySource: no clock");
}

DirectorySource::~DirectorySource() {
    detach();
}

void DirectorySource::attach(EventLoop &loop, std::function<void()> wake) {
    loop_ = &loop;
    wake_ = std::move(wake);
    inotify_ = Fd(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
    if (inotify_.get() < 0)
        throw IoError("inotify_init1", errno);
    loop_->watch(inotify_.get(), EPOLLIN, [this](std::uint32_t) { readEvents(); });
    arm();
}

void DirectorySource::detach() {
    if (loop_ == nullptr)
        return;
    if (rearmTimer_ != 0)
        loop_->cancel(rearmTimer_);
    rearmTimer_ = 0;
    // The timers hold this source: none may fire once it is detached (and maybe destroyed).
    for (const auto &[name, timer] : rechecks_)
        loop_->cancel(timer);
    rechecks_.clear();
    loop_->unwatch(inotify_.get());
    inotify_ = Fd();
    watch_ = -1;
    loop_ = nullptr;
}

void DirectorySource::arm() {
    rearmTimer_ = 0;
    // IN_DONT_FOLLOW and IN_ONLYDIR: a watched folder that is a symlink, or not a folder, is
    // not watched (and take() refuses to open it the same way).
    watch_ = ::inotify_add_watch(inotify_.get(), config_.path.c_str(), watchMask);
    if (watch_ < 0) {
        const int err = errno;
        if (available_ || !everArmed_) {
            // One line per change, not one per look: a missing stick is a normal state.
            spdlog::warn("- source {}: {} is not there ({}); waiting for it", config_.name,
                         config_.path,
                         err == ELOOP ? "a symlink, not followed" : std::strerror(err));
        }
        available_ = false;
        everArmed_ = true;
        rearmTimer_ = loop_->after(config_.rearmMs, [this] { arm(); });
        return;
    }
    if (everArmed_ && !available_)
        spdlog::info("- source {}: {} is back; watching it again", config_.name, config_.path);
    available_ = true;
    everArmed_ = true;
    rescan_ = true;
    wake_();
}

void DirectorySource::folderGone(const char *why) {
    if (!available_)
        return;
    spdlog::warn("- source {}: {} {}; waiting for it to come back", config_.name, config_.path,
                 why);
    available_ = false;
    if (watch_ >= 0)
        ::inotify_rm_watch(inotify_.get(), watch_); // EINVAL when the kernel dropped it already
    watch_ = -1;
    dirty_.clear();
    writing_.clear();
    settled_.clear(); // what is there when it comes back is looked at afresh
    if (rearmTimer_ == 0)
        rearmTimer_ = loop_->after(config_.rearmMs, [this] { arm(); });
}

void DirectorySource::readEvents() {
    alignas(inotify_event) char buf[64 * (sizeof(inotify_event) + NAME_MAX + 1)];
    bool any = false;
    for (;;) {
        const ssize_t n = ::read(inotify_.get(), buf, sizeof buf);
        if (n <= 0)
            break; // EAGAIN: drained
        for (ssize_t off = 0; off < n;) {
            const auto *ev = reinterpret_cast<const inotify_event *>(buf + off);
            off += static_cast<ssize_t>(sizeof(inotify_event) + ev->len);
            if (ev->mask & IN_Q_OVERFLOW) {
                rescan_ = true; // events were lost: the rescan finds what they said
                any = true;
                continue;
            }
            if (ev->wd != watch_)
                continue; // a watch dropped earlier
            if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED)) {
                folderGone(ev->mask & IN_UNMOUNT     ? "was unmounted"
                           : ev->mask & IN_MOVE_SELF ? "was moved away"
                                                     : "was removed");
                any = true;
                continue;
            }
            if (ev->len == 0 || (ev->mask & IN_ISDIR))
                continue;
            const std::string name(ev->name);
            if (looksTemporary(name))
                continue;
            if (config_.ignore && config_.ignore(name)) {
                // A manifest came: files that waited for it are looked at again.
                if (ev->mask & (IN_CLOSE_WRITE | IN_MOVED_TO)) {
                    rescan_ = true;
                    any = true;
                }
                continue;
            }
            if (ev->mask & (IN_DELETE | IN_MOVED_FROM)) {
                writing_.erase(name);
                dirty_.erase(name);
                settled_.erase(name);
            } else if (ev->mask & (IN_CLOSE_WRITE | IN_MOVED_TO)) {
                // Complete as far as its writer is concerned: look at it now.
                writing_.erase(name);
                dirty_.insert(name);
                any = true;
            } else if (ev->mask & (IN_CREATE | IN_MODIFY)) {
                writing_.insert(name); // a writer is at work: wait for it to close the file
            }
        }
    }
    if (any)
        wake_();
}

void DirectorySource::recheckLater(const std::string &name, std::int64_t delayMs) {
    if (loop_ == nullptr || rechecks_.contains(name))
        return; // one look later per name is enough
    rechecks_[name] = loop_->after(std::max<std::int64_t>(delayMs, 10), [this, name] {
        rechecks_.erase(name);
        dirty_.insert(name);
        wake_();
    });
}

Taken DirectorySource::take(Ledger &ledger, std::size_t maxItems, std::size_t maxBytes, bool full) {
    Taken taken;
    if (loop_ != nullptr && !available_) {
        // Waiting for the folder; arm() wakes the pipeline when it is back. A full look counts
        // it, so that a batch run says the folder was not read.
        taken.errors = full ? 1 : 0;
        return taken;
    }
    std::optional<Directory> dir;
    std::vector<std::string> names;
    try {
        dir.emplace(Directory::open(config_.path));
        if (full || rescan_ || loop_ == nullptr) {
            rescan_ = false;
            dirty_.clear();
            for (const auto &entry : dir->list()) {
                if (auto original = heldName(entry.name);
                    original && entry.type == DirEntry::Type::Regular) {
                    // Held by an acknowledgement that a killed run never finished: back under
                    // its name, it is found below (or on the next look) and acknowledged then.
                    if (dir->moveTo(entry.name, *dir, *original))
                        dirty_.insert(*original);
                    else if (warned_.insert(entry.name).second)
                        spdlog::warn("- source {}: {} cannot have its name {} back: a file of "
                                     "that name is there",
                                     config_.name, printable(entry.name), printable(*original));
                    continue;
                }
                if (entry.type == DirEntry::Type::Directory || looksTemporary(entry.name))
                    continue; // processed/, quarantine folders, files still being written
                if (config_.ignore && config_.ignore(entry.name))
                    continue;
                if (entry.type != DirEntry::Type::Regular) {
                    if (warned_.insert(entry.name).second)
                        spdlog::warn("- source {}: {} is {}; not read", config_.name,
                                     printable(entry.name),
                                     entry.type == DirEntry::Type::Symlink ? "a symlink"
                                                                           : "not a regular file");
                    continue;
                }
                if (auto it = settled_.find(entry.name);
                    it != settled_.end() && dir->identity(entry.name) == it->second)
                    continue; // stored (or ours) and unchanged since
                names.push_back(entry.name);
            }
        } else {
            names.assign(dirty_.begin(), dirty_.end());
            dirty_.clear();
        }
    } catch (const IoError &e) {
        spdlog::error("- source {}: {}; looked at again later", config_.name, e.what());
        ++taken.errors;
        rescan_ = true;
        return taken;
    }

    std::size_t bytes = 0;
    for (std::size_t i = 0; i < names.size(); ++i) {
        if (taken.submissions.size() + taken.unacknowledged.size() >= maxItems ||
            bytes >= maxBytes) {
            // Bounded by count and by bytes: the rest waits for the next take.
            dirty_.insert(names.begin() + static_cast<std::ptrdiff_t>(i), names.end());
            taken.more = true;
            break;
        }
        considerName(names[i], ledger, *dir, taken, bytes);
    }
    return taken;
}

mail::Limits DirectorySource::mimeLimits() const {
    mail::Limits l;
    l.maxSize = static_cast<std::size_t>(config_.maxMessageSize);
    return l;
}

// An .eml or .p7m: the request inside it, found as a mail source finds it. On disk one file is
// one arrival with one answer, so a file with several requests is refused whole (the reason
// says to save them one per file) rather than half relayed.
Classification DirectorySource::fromMail(ByteView bytes) const {
    auto found = mail::extract(bytes, mimeLimits(), config_.smime);
    for (const auto &p : found.problems)
        spdlog::debug("- source {}: {}", config_.name, printable(p));
    if (found.requests.size() == 1)
        return std::move(found.requests.front().message);
    if (found.requests.empty())
        return Rejection{found.noRequestReason, std::nullopt, found.truncated};
    return Rejection{fmt::format("the file holds {} requests; save each in a file of its own",
                                 found.requests.size()),
                     std::nullopt, false};
}

bool DirectorySource::considerName(const std::string &name, Ledger &ledger, const Directory &dir,
                                   Taken &taken, std::size_t &bytes) {
    const std::int64_t now = config_.wallClock();
    if (writing_.contains(name)) {
        // Created or modified and not closed yet. A writer that vanished without closing (or an
        // event lost) is caught by the settle time.
        if (auto id = dir.identity(name)) {
            const std::int64_t age = now - id->mtimeNs / 1'000'000;
            if (age < config_.settleMs) {
                ++taken.stillArriving;
                recheckLater(name, config_.settleMs - age);
                return false;
            }
        }
        writing_.erase(name);
    }
    // Never open what is not a regular file (a FIFO would block, a device node may act on
    // being opened): the same rule as a rescan, and no error either.
    if (const auto type = dir.typeOf(name); type && *type != DirEntry::Type::Regular) {
        if (warned_.insert(name).second)
            spdlog::warn("- source {}: {} is {}; not read", config_.name, printable(name),
                         *type == DirEntry::Type::Symlink ? "a symlink" : "not a regular file");
        return false;
    }
    FileRead file;
    try {
        file = dir.read(name, config_.maxMessageSize);
    } catch (const IoError &e) {
        if (e.error() == ENOENT)
            return false; // gone meanwhile
        if (warned_.insert(name).second)
            spdlog::warn("- source {}: {}; not read", config_.name, printable(e.what()));
        if (e.error() != ELOOP)
            ++taken.errors; // unreadable: not done, and a person should look
        return false;
    }
    warned_.erase(name);

    Submission sub;
    sub.arrival = {config_.name, name, config_.responses};
    sub.size = file.size;
    if (file.tooLarge) {
        // Not read, so not stored whole: the file stays where it is. Source, name, size and
        // mtime identify this arrival, so later looks do not record it again.
        sub.arrivalSha256 = fmt::format("oversize:{}:{}:{}:{}", config_.name,
                                        sha256Hex(asBytes(name)), file.size, file.identity.mtimeNs);
        sub.rejectReason =
            fmt::format("too large: {} bytes, the limit is {} (limits.max_message_size)", file.size,
                        config_.maxMessageSize);
    } else {
        sub.arrivalSha256 = sha256Hex(file.bytes);
        // A response entity pkirelay wrote here is recorded by the response's own hash.
        const auto body = mail::isMailFileName(name)
                              ? mail::singlePartBody(file.bytes, mimeLimits())
                              : std::nullopt;
        if (ledger.isOurResponse(config_.responses, name, sub.arrivalSha256) ||
            (body && ledger.isOurResponse(config_.responses, name, sha256Hex(*body)))) {
            settled_[name] = file.identity; // a response pkirelay wrote here
            return false;
        }
    }
    const auto seen = ledger.arrival(config_.name, name, sub.arrivalSha256);
    if (seen.state == Ledger::Seen::State::Kept) {
        settled_[name] = file.identity;
        return false;
    }
    const bool removable = !file.tooLarge && config_.after != DirectorySourceConfig::After::Keep;
    const std::uint64_t token = nextToken_++;
    pending_[token] = {name, file.identity, removable};
    if (seen.state == Ledger::Seen::State::Unacknowledged) {
        // Stored by a run that stopped before acknowledging it: acknowledge it now.
        taken.unacknowledged.emplace_back(token, seen.deliveryId);
        return true;
    }
    bool refused = false; // by the check hook: stored as a rejection, not classified
    if (!file.tooLarge && config_.check) {
        auto [verdict, why] = config_.check(name, file.bytes);
        if (verdict == DirectorySourceConfig::Verdict::Wait ||
            verdict == DirectorySourceConfig::Verdict::Skip) {
            pending_.erase(token);
            if (verdict == DirectorySourceConfig::Verdict::Wait)
                ++taken.stillArriving;
            return false;
        }
        if (verdict == DirectorySourceConfig::Verdict::Reject) {
            sub.rejectReason = std::move(why);
            sub.rejectedBytes = std::move(file.bytes);
            refused = true;
        }
    }
    if (!file.tooLarge && !refused) {
        ClassifyLimits limits;
        limits.maxSize = static_cast<std::size_t>(config_.maxMessageSize);
        // An .eml is always a mail; a .p7m is an S/MIME entity only when it is not a bare
        // request already (mail::entityFormContext).
        auto classified = classify(file.bytes, limits);
        const bool p7m = asciiLower(name).ends_with(".p7m");
        if (mail::isMailFileName(name) && (std::holds_alternative<Rejection>(classified) || !p7m)) {
            classified = fromMail(file.bytes);
            sub.arrival.context = std::string(mail::entityFormContext);
        }
        if (auto *rejection = std::get_if<Rejection>(&classified)) {
            const std::int64_t age = now - file.mtimeMs;
            if (rejection->truncated && age < config_.settleMs) {
                spdlog::debug("- source {}: {} ends early ({}); taken to be still arriving",
                              config_.name, printable(name), rejection->reason);
                pending_.erase(token);
                ++taken.stillArriving;
                recheckLater(name, config_.settleMs - age);
                return false;
            }
            sub.rejectReason = rejection->reason;
            sub.rejectedBytes = std::move(file.bytes);
        } else {
            sub.message = std::move(std::get<Message>(classified));
            sub.relay = sub.message->isRequest();
            // A bare DER file is its message: one hash serves as both (not for PEM or mail).
            if (std::ranges::equal(sub.message->der, file.bytes))
                sub.messageSha256 = sub.arrivalSha256;
        }
    }
    sub.acknowledgedWhenStored = !removable;
    bytes += sub.size;
    taken.submissions.push_back(std::move(sub));
    taken.tokens.push_back(token);
    return true;
}

std::vector<Source::Ack> DirectorySource::acknowledge(const std::vector<std::uint64_t> &tokens) {
    std::vector<Ack> acks(tokens.size(), Ack::Failed);
    std::optional<Directory> dir, moveDir;
    bool touched = false;
    for (std::size_t i = 0; i < tokens.size(); ++i) {
        auto node = pending_.extract(tokens[i]);
        if (node.empty())
            throw std::logic_error("DirectorySource: acknowledge of an unknown token");
        const Pending &p = node.mapped();
        if (!p.removable) {
            settled_[p.name] = p.identity;
            acks[i] = Ack::Kept;
            continue;
        }
        try {
            if (!dir)
                dir.emplace(Directory::open(config_.path));
            // The name is taken first: held under a private name, the file can no longer be
            // replaced under us between the check and the removal (a client writing again
            // under the same name would lose its new file, unread). Then only the file that
            // was read and stored is removed; one replaced before we took it is given its
            // name back and looked at again.
            // A name within ackSuffix's length of NAME_MAX has no private name (ENAMETOOLONG,
            // and it would never be acknowledged): it is checked and removed under its own name,
            // where a client replacing it in that instant could lose its new file.
            const std::string privateName = "." + p.name + std::string(ackSuffix);
            const bool holdable = privateName.size() <= NAME_MAX;
            const std::string &held = holdable ? privateName : p.name;
            const bool took = !holdable || dir->moveTo(p.name, *dir, held);
            if (!took || dir->identity(held) != p.identity) {
                if (took && holdable && !dir->moveTo(held, *dir, p.name))
                    rescan_ = true; // replaced twice over: the rescan gives it its name back
                spdlog::warn("- source {}: {} changed after it was read; looked at again",
                             config_.name, printable(p.name));
                dirty_.insert(p.name);
                acks[i] = Ack::Failed;
                continue;
            }
            crashPoint("held"); // the stored file under its private name
            try {
                if (config_.after == DirectorySourceConfig::After::Delete) {
                    dir->unlink(held);
                } else {
                    if (!moveDir)
                        moveDir.emplace(Directory::openOrCreate(config_.moveTo));
                    std::string target = p.name;
                    for (int n = 1; !dir->moveTo(held, *moveDir, target); ++n)
                        target = fmt::format("{}.{}", p.name, n);
                }
            } catch (const IoError &) {
                if (holdable && !dir->moveTo(held, *dir, p.name))
                    rescan_ = true;
                throw;
            }
            touched = true;
            settled_.erase(p.name);
            acks[i] = Ack::Removed;
        } catch (const IoError &e) {
            // Not looked at again before the next full rescan: what failed now would fail again
            // at once.
            spdlog::error("- source {}: stored, but {} (acknowledged on a later look)",
                          config_.name, printable(e.what()));
        }
    }
    if (touched) {
        try {
            dir->sync();
            if (moveDir)
                moveDir->sync();
        } catch (const IoError &e) {
            // The items are committed; at worst a file reappears and is known to the store.
            spdlog::error("- source {}: {}", config_.name, e.what());
        }
    }
    if (!dirty_.empty() && wake_)
        wake_();
    return acks;
}

} // namespace pkirelay
