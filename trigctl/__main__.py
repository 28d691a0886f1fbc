from trigctl.cli import main

main()
