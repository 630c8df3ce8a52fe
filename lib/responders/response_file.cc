// Response files (response_file.h): naming, reservation-aware planning, durable batch writes.
#include "lib/responders/response_file.h"

#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <sys/stat.h>

#include <fmt/format.h>

#include "lib/file_io.h"
#include "lib/mail/compose.h"
#include "lib/mail/mime.h"

namespace pkirelay {

namespace {

// "ir.der" -> "ir"; names without an extension (or dotfiles) stay as they are.
std::string stemOf(const std::string &name) {
    const auto dot = name.rfind('.');
    if (dot == std::string::npos || dot == 0)
        return name;
    return name.substr(0, dot);
}

} // namespace

std::string responseFileName(const std::string &origin, Kind kind, int attempt, bool entity) {
    std::string stem = stemOf(origin);
    std::string ext(kindInfo(kind).fileExt);
    if (entity) {
        // S/MIME on disk: answered in the request's own form (x.eml -> x.response.eml), never
        // under the request's name, which the request may still hold.
        ext = origin.substr(origin.size() - 4);
        ++attempt;
    }
    const std::string suffix = attempt == 0   ? ""
                               : attempt == 1 ? ".response"
                                              : fmt::format(".response-{}", attempt);
    if (stem.size() + suffix.size() + ext.size() > maxOutputName)
        stem = stem.substr(0, maxOutputName - suffix.size() - ext.size() - 17) + "-" +
               sha256Hex(asBytes(origin)).substr(0, 16);
    return stem + suffix + ext;
}

namespace {

// The folders of one batch, each opened once; a folder that cannot be opened stays empty and
// its tasks wait.
class Folders {
public:
    Folders(const std::map<std::string, std::string> &creatable) : creatable_(creatable) {}
    const Directory *get(const std::string &path, std::string &error) {
        auto [it, fresh] = dirs_.try_emplace(path);
        if (fresh) {
            try {
                it->second.dir.emplace(mayCreate(path) ? Directory::openOrCreate(path)
                                                       : Directory::open(path));
            } catch (const IoError &e) {
                it->second.error = e.what();
            }
        }
        error = it->second.error;
        return it->second.dir ? &*it->second.dir : nullptr;
    }

private:
    bool mayCreate(const std::string &path) const {
        auto it = creatable_.find(path);
        if (it == creatable_.end())
            return false;
        struct stat anchor {
        }, parent{};
        const std::string up = std::filesystem::path(path).parent_path().string();
        return ::stat(it->second.c_str(), &anchor) == 0 && ::stat(up.c_str(), &parent) == 0 &&
               anchor.st_dev == parent.st_dev;
    }
    struct Slot {
        std::optional<Directory> dir;
        std::string error;
    };
    const std::map<std::string, std::string> &creatable_;
    std::map<std::string, Slot> dirs_;
};

} // namespace

void ResponseFileResponder::plan(std::span<DeliveryTask> tasks, const Reserved &reserved) {
    Folders folders(creatable_);
    std::set<std::pair<std::string, std::string>> chosen; // this batch's own choices
    for (auto &task : tasks) {
        if (!task.output.empty())
            continue;
        std::string error;
        const Directory *dir = folders.get(task.arrival.replyTo, error);
        if (dir == nullptr) {
            task.waitReason = error; // planned when the folder is there
            continue;
        }
        auto taken = [&](const std::string &name) {
            return dir->exists(name) || chosen.contains({task.arrival.replyTo, name}) ||
                   reserved(task.arrival.replyTo, name);
        };
        int attempt = 0;
        const bool entity = task.arrival.context == mail::entityFormContext;
        std::string name = responseFileName(task.arrival.origin, task.kind, attempt, entity);
        while (taken(name))
            name = responseFileName(task.arrival.origin, task.kind, ++attempt, entity);
        chosen.insert({task.arrival.replyTo, name});
        task.output = name;
    }
}

void removeTemporaryFiles(const std::string &folder) {
    try {
        const Directory dir = Directory::open(folder);
        for (const auto &entry : dir.list())
            if (entry.type == DirEntry::Type::Regular && entry.name.starts_with('.') &&
                entry.name.ends_with(temporarySuffix))
                dir.unlink(entry.name);
    } catch (const IoError &) {
        // A folder that is not there holds none.
    }
}

std::vector<DeliveryResult> ResponseFileResponder::deliver(std::span<const DeliveryTask> tasks) {
    std::vector<DeliveryResult> results(tasks.size());
    // What goes into each file: the response itself, or for a request that came as a mail or
    // S/MIME entity the response as a MIME entity (lib/mail/compose.h), made the same way every
    // time so that an earlier attempt's file is recognised.
    std::vector<std::string> entities(tasks.size());
    auto content = [&](std::size_t i) -> ByteView {
        const auto &task = tasks[i];
        if (task.arrival.context != mail::entityFormContext)
            return task.response;
        if (entities[i].empty())
            entities[i] =
                mail::composeEntity(task.kind, task.response, kindInfo(task.kind).mailName);
        return asBytes(entities[i]);
    };
    Folders folders(creatable_);
    std::vector<FileToWrite> files;
    std::vector<std::size_t> index; // files[i] is tasks[index[i]]
    for (std::size_t i = 0; i < tasks.size(); ++i) {
        const auto &task = tasks[i];
        std::string error;
        const Directory *dir = folders.get(task.arrival.replyTo, error);
        if (dir == nullptr) {
            results[i] = {DeliveryResult::Type::Retry, error};
            continue;
        }
        if (task.planned && dir->exists(task.output)) {
            // Chosen by an earlier attempt that may have written it before it could record
            // that: if it holds this very response, it is delivered. Anything else under that
            // name is not ours and is never replaced.
            FileRead there;
            const ByteView want = content(i);
            try {
                there = dir->read(task.output, want.size());
            } catch (const IoError &) {
                // Unreadable, a symlink, not a regular file: not this response either.
            }
            if (!there.tooLarge &&
                std::equal(there.bytes.begin(), there.bytes.end(), want.begin(), want.end())) {
                results[i] = {DeliveryResult::Type::Delivered, "already written"};
                continue;
            }
            results[i] = {DeliveryResult::Type::NeedsPerson,
                          fmt::format("{}/{} is taken by a file that is not this response; not "
                                      "replaced (move it away and the response is written)",
                                      task.arrival.replyTo, printable(task.output))};
            continue;
        }
        files.push_back({dir, task.output, content(i), std::to_string(task.deliveryId)});
        index.push_back(i);
    }
    // One write per mode (folders of one mode are synced together).
    std::vector<std::string> errors(files.size());
    std::map<mode_t, std::vector<std::size_t>> byMode;
    for (std::size_t f = 0; f < files.size(); ++f) {
        auto it = modes_.find(files[f].dir->path());
        byMode[it == modes_.end() ? 0600 : it->second].push_back(f);
    }
    for (const auto &[mode, which] : byMode) {
        std::vector<FileToWrite> group;
        for (auto f : which)
            group.push_back(files[f]);
        const auto groupErrors = writeFilesDurably(group, mode);
        for (std::size_t g = 0; g < which.size(); ++g)
            errors[which[g]] = groupErrors[g];
    }
    for (std::size_t f = 0; f < files.size(); ++f) {
        auto &r = results[index[f]];
        if (errors[f].empty())
            r = {DeliveryResult::Type::Delivered, {}}; // the pipeline says where, when it logs
        else
            r = {DeliveryResult::Type::Retry, errors[f]};
    }
    return results;
}

void ResponseFileResponder::recover() {
    for (const auto &[folder, mode] : modes_)
        removeTemporaryFiles(folder);
}

} // namespace pkirelay
