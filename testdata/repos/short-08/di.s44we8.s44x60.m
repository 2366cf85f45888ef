Hostname vm
Localdir src
Volume 1:
    StartingPath   .  
    EndingPath     docs/c.txt  
    Hash SHA1 ce13b009136873af6827360090951929c6bdf244
Filelist 3
    changed  bin/tool
    changed  docs/a.txt
    new      docs/c.txt
