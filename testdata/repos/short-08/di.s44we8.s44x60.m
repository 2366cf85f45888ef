Hostname vm
Localdir src/short-08
Volume 1:
    StartingPath   .  
    EndingPath     docs/c.txt  
    Hash SHA1 3748517e810ec61c5fe9d94dbe6391277c2fd12f
Filelist 3
    changed  bin/tool
    changed  docs/a.txt
    new      docs/c.txt
