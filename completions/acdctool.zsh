#compdef acdctool
# zsh completion for acdctool: copy to a folder on $fpath as _acdctool (before compinit runs),
# or source this file after compinit.

_acdctool() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _ACDCTOOL_COMPLETE=complete_zsh acdctool)
}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
  _acdctool "$@"  # autoloaded from $fpath: complete now; later calls run the function above
else
  compdef _acdctool acdctool
fi
