Hostname vm
Localdir src/short-08
Volume 1:
    StartingPath   .  
    EndingPath     link  
    Hash SHA1 9f6092615ddb11c81fdb48eb712d2c08c8d7a017
Filelist 2
    changed  data.bin
    deleted  docs/b.txt
