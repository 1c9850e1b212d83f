// Initialise Slotstream's MongoDB replica set and enable change-stream pre-images.
// Idempotent: safe to run again and again. Run with mongosh against one member:
//   mongosh --quiet --norc --file init-replica-set.js
// Used as the Compose healthcheck of `mongo` (exit 0 only once a writable primary exists
// and the collections are prepared) and by the Kubernetes init Job.
//
// Environment:
//   RS_NAME                replica set name                         (rs0)
//   RS_MEMBERS             comma-separated host:port of the members  (mongo:27017)
//                          the first one gets the highest priority
//   SLOTSTREAM_DB          database of the collections below         (slotstream)
//   PRE_IMAGE_COLLECTIONS  collections that get changeStreamPreAndPostImages, so the
//                          publisher can map a hand-made hard delete from its pre-image
//                          (slots,bookings,notifications; empty: none)
//   WAIT_SECONDS           how long to wait for a primary            (0: check once)

const rsName = process.env.RS_NAME || "rs0";
const members = (process.env.RS_MEMBERS || "mongo:27017")
  .split(",")
  .map((host) => host.trim())
  .filter((host) => host.length > 0);
const dbName = process.env.SLOTSTREAM_DB || "slotstream";
const preImageCollections = (process.env.PRE_IMAGE_COLLECTIONS ?? "slots,bookings,notifications")
  .split(",")
  .map((name) => name.trim())
  .filter((name) => name.length > 0);
const waitSeconds = Number(process.env.WAIT_SECONDS || "0");

function initiateIfNeeded() {
  try {
    rs.status();
    return false;
  } catch (error) {
    // 94 NotYetInitialized: a fresh member. Anything else is a real problem.
    if (error.code !== 94 && error.codeName !== "NotYetInitialized") {
      throw error;
    }
  }
  const config = {
    _id: rsName,
    members: members.map((host, index) => ({ _id: index, host, priority: index === 0 ? 2 : 1 })),
  };
  rs.initiate(config);
  print(`slotstream: initiated replica set ${rsName} with ${members.join(", ")}`);
  return true;
}

function primaryDatabase() {
  const deadline = Date.now() + waitSeconds * 1000;
  for (;;) {
    const hello = db.adminCommand({ hello: 1 });
    if (hello.isWritablePrimary) {
      return db.getSiblingDB(dbName);
    }
    if (hello.primary) {
      // Connected to a secondary: do the collection work on the primary.
      return connect(`mongodb://${hello.primary}/${dbName}?directConnection=true`);
    }
    if (Date.now() >= deadline) {
      print(`slotstream: replica set ${rsName} has no primary yet`);
      quit(1);
    }
    sleep(1000);
  }
}

function enablePreImages(target) {
  const existing = new Map(target.getCollectionInfos().map((info) => [info.name, info]));
  for (const name of preImageCollections) {
    const info = existing.get(name);
    if (info === undefined) {
      target.createCollection(name, { changeStreamPreAndPostImages: { enabled: true } });
      print(`slotstream: created ${dbName}.${name} with pre-images`);
    } else if (!(info.options.changeStreamPreAndPostImages || {}).enabled) {
      target.runCommand({ collMod: name, changeStreamPreAndPostImages: { enabled: true } });
      print(`slotstream: enabled pre-images on ${dbName}.${name}`);
    }
  }
}

initiateIfNeeded();
enablePreImages(primaryDatabase());
