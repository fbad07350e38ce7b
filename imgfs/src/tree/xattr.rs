//! Extended attributes of an inode: get, list, set and remove.

use super::{Tree, show};
use crate::error::{Error, Result};
use crate::ids::Ino;
use crate::records::Timestamp;

impl Tree {
    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        self.inode(ino)?
            .xattr(name)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| Error::NoAttr(show(name)))
    }

    pub fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        Ok(self
            .inode(ino)?
            .xattrs
            .into_iter()
            .map(|(n, _)| n)
            .collect())
    }

    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8]) -> Result<()> {
        if name.is_empty() || name.len() > 255 || value.len() > 65536 {
            return Err(Error::Invalid(format!("xattr {}", show(name))));
        }
        let _g = self.writer()?;
        let mut inode = self.inode(ino)?;
        inode.set_xattr(name, value);
        inode.ctime = Timestamp::now();
        let mut txn = self.txn();
        txn.put_inode(ino, &inode);
        txn.write()
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        let _g = self.writer()?;
        let mut inode = self.inode(ino)?;
        if !inode.remove_xattr(name) {
            return Err(Error::NoAttr(show(name)));
        }
        inode.ctime = Timestamp::now();
        let mut txn = self.txn();
        txn.put_inode(ino, &inode);
        txn.write()
    }
}
