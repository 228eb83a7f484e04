from jailkit.entry import main

main()
