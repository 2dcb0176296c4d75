//! Recovery targets reach the tool as an operator gives them: the server's
//! local time with its offset. PostgreSQL must read what pgdrill writes as
//! the instant meant, and pgdrill must write what psql shows, in every
//! zone a drill draws, the one whose daylight saving starts mid-run
//! included.

use crate::common;

use chrono::{DateTime, Duration, Utc};
use common::*;
use pgdrill::env::local::InitOptions;
use pgdrill::env::zone::{dst_starting_at, ServerZone};

#[tokio::test(flavor = "multi_thread")]
async fn targets_in_every_drawn_zone_read_back_as_the_instant_and_as_psql_shows_them() {
    let env = TestEnv::start("zones", Storage::Dir, &[], InitOptions::default());
    let client = env.primary.connect().await.unwrap();
    // Microseconds without trailing zeros: psql prints all six then.
    let winter: DateTime<Utc> = "2026-12-05T07:53:26.123457Z".parse().unwrap();
    let summer: DateTime<Utc> = "2027-07-01T12:00:00.654321Z".parse().unwrap();
    let switch = winter + Duration::seconds(30);
    let mut cases: Vec<(String, Vec<DateTime<Utc>>)> = pgdrill::drill::ZONES
        .iter()
        .map(|z| (z.to_string(), vec![winter, summer]))
        .collect();
    cases.push((
        dst_starting_at(switch),
        vec![
            switch - Duration::microseconds(1_000_001),
            switch + Duration::microseconds(1),
        ],
    ));
    for (setting, instants) in cases {
        let zone = ServerZone::new(&setting).unwrap();
        client
            .execute("SELECT set_config('TimeZone', $1, false)", &[&setting])
            .await
            .unwrap();
        for t in instants {
            let ours = zone.format(t);
            let row = client
                .query_one(
                    "SELECT $1::timestamptz::text, $2::text::timestamptz",
                    &[&t, &ours],
                )
                .await
                .unwrap();
            let (psql, read): (String, DateTime<Utc>) = (row.get(0), row.get(1));
            assert_eq!(ours, psql, "{setting} at {t}: what psql shows");
            assert_eq!(
                read, t,
                "{setting}: the server reads {ours} as the instant meant"
            );
        }
    }
}
