# Print the completions zsh offers for a command line, one per line.
# usage: zsh -f zsh_complete.zsh SCRIPT 'stepbuild build --net'
# An interactive zsh runs in a pty (zsh/zpty) with SCRIPT loaded by compinit; the line is
# typed and completed with TAB. compadd is wrapped to print what each call adds between two
# marks (printed before and after the completion widget), then the shell exits.
zmodload zsh/zpty
script=$1 typed=$2
setup=$(mktemp)
trap 'rm -f $setup' EXIT
cat > $setup <<SETUP
PROMPT=
autoload -U compinit && compinit -u -D
source ${(q)script}
bindkey '^I' complete-word
zstyle ':completion:*' list-grouped false
zstyle ':completion:*' insert-tab false
__mark() { print -r -- '@@MARK@@' }
compprefuncs=( __mark )
comppostfuncs=( __mark exit )
compadd() {
  # -O/-A/-D only fill arrays for the caller: nothing is offered yet
  if [[ \${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "\$@"; return; fi
  local -a __hits
  builtin compadd -A __hits "\$@"
  (( \$#__hits )) && print -rl -- "@@HIT@@"\${^__hits}
  builtin compadd "\$@"
}
print -r -- @@READY@@
SETUP
zpty z zsh -f -i
zpty -w z "source $setup"
zpty -r z line '*@@READY@@*'
zpty -n -w z "$typed"$'\t'
integer marks=0 idle=0
while (( marks < 2 && idle < 200 )); do  # 10 s of silence: give up
  if zpty -r -t z line 2>/dev/null; then
    idle=0
    [[ $line == *@@HIT@@* ]] && print -r -- ${${line#*@@HIT@@}%%$'\r'*}
    [[ $line == *@@MARK@@* ]] && (( ++marks ))
  else
    (( ++idle )); sleep 0.05
  fi
done
zpty -d z
(( marks == 2 ))
