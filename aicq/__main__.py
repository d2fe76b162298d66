from aicq.cli import main

main()
