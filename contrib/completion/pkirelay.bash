# bash completion for pkirelay(1): subcommands, their options, state and kind names, and files
# where a command takes them. Install as /usr/share/bash-completion/completions/pkirelay.
# Item ids are not completed: that would read the store on every <Tab>.

_pkirelay() {
    local cur prev words cword
    _init_completion || return

    local commands="run inspect check-config status list show retry hold release purge export deliver media"
    local global="-v --verbose -q --quiet --version -h --help"
    local states="queued relaying deferred answered failed quarantined held awaiting unmatched review"
    local kinds="cmc-simple-request cmc-full-request cmc-simple-response cmc-full-response cmc-enveloped cmp"

    local cmd="" i
    for ((i = 1; i < cword; i++)); do
        case ${words[i]} in
        -*) ;;
        *)
            cmd=${words[i]}
            break
            ;;
        esac
    done

    case $prev in
    -c | --config)
        _filedir toml
        return
        ;;
    --dir)
        _filedir -d
        return
        ;;
    --state)
        COMPREPLY=($(compgen -W "$states" -- "$cur"))
        return
        ;;
    --kind)
        COMPREPLY=($(compgen -W "$kinds" -- "$cur"))
        return
        ;;
    --older-than | --newer-than)
        COMPREPLY=($(compgen -W "30s 15m 12h 1d 7d 30d" -- "$cur"))
        return
        ;;
    --source | -n | --limit | --endpoint | --batch)
        return
        ;;
    esac

    if [[ -z $cmd ]]; then
        COMPREPLY=($(compgen -W "$commands $global" -- "$cur"))
        return
    fi

    local opts="-c --config $global"
    case $cmd in
    run) opts+=" --once --new-store" ;;
    inspect)
        opts="--json $global"
        if [[ $cur != -* ]]; then
            _filedir
            return
        fi
        ;;
    check-config) opts+=" --keys" ;;
    status | show | hold | release) opts+=" --json" ;;
    list) opts+=" --json --state --source --kind --older-than --newer-than -n --limit" ;;
    retry) opts+=" --json --failed" ;;
    purge) opts+=" --json --older-than" ;;
    export) opts+=" --json --dir" ;;
    deliver) opts+=" --json --force" ;;
    media)
        # media status | media report [--endpoint NAME] [--batch N]
        if [[ " ${words[*]:1:cword-1} " != *" status "* && " ${words[*]:1:cword-1} " != *" report "* ]]; then
            opts="status report $opts"
        else
            opts+=" --json --endpoint --batch"
        fi
        ;;
    esac
    COMPREPLY=($(compgen -W "$opts" -- "$cur"))
} && complete -F _pkirelay pkirelay
