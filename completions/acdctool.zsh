
#compdef acdctool

_acdctool_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _ACDCTOOL_COMPLETE=complete_zsh acdctool)
}

compdef _acdctool_completion acdctool

