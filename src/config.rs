//! The command line: every flag also reads a `LOBBY_*` environment variable.
//! Durations are written the way people write them: `5s`, `500ms`, `2m`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::presence::PresenceConfig;

/// A small, fast "who's online" server: POST /join, then listen on GET /events.
#[derive(Debug, Clone, Parser)]
#[command(name = "lobby", version, about, long_about = None)]
pub struct Config {
    /// Address and port to listen on.
    #[arg(
        long,
        env = "LOBBY_BIND",
        default_value = "127.0.0.1:3000",
        value_name = "ADDR"
    )]
    pub bind: SocketAddr,

    /// How long a user whose last stream closed stays online, waiting for it to reopen.
    #[arg(long, env = "LOBBY_GRACE", default_value = "5s", value_name = "DUR", value_parser = parse_duration)]
    pub grace: Duration,

    /// How long a user who joined has to open their first stream before being dropped.
    #[arg(long, env = "LOBBY_JOIN_TIMEOUT", default_value = "10s", value_name = "DUR", value_parser = parse_duration)]
    pub join_timeout: Duration,

    /// How often every stream gets a comment line, so proxies keep it open.
    #[arg(long, env = "LOBBY_KEEPALIVE", default_value = "15s", value_name = "DUR", value_parser = parse_positive_duration)]
    pub keepalive: Duration,

    /// Joins are refused (503) while this many users are online.
    #[arg(
        long,
        env = "LOBBY_MAX_USERS",
        default_value_t = 100_000,
        value_name = "N"
    )]
    pub max_users: usize,
}

impl Config {
    /// The defaults, as if `lobby` were run with no flags (environment included).
    pub fn from_env() -> Result<Config, clap::Error> {
        Config::try_parse_from(["lobby"])
    }

    pub fn presence(&self) -> PresenceConfig {
        PresenceConfig {
            grace: self.grace,
            join_timeout: self.join_timeout,
            max_users: self.max_users,
            ..PresenceConfig::default()
        }
    }

    /// The `retry:` a stream tells its browser: reconnect well within the grace
    /// period, so a dropped connection comes back before anyone sees a leave.
    pub fn retry(&self) -> Duration {
        (self.grace / 2).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|err| format!("{err}; write a duration like 5s, 500ms or 2m"))
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err("must be longer than zero".into()),
        duration => Ok(duration),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("lobby").chain(args.iter().copied()))
    }

    #[test]
    fn durations_are_written_as_people_write_them() -> Result<(), clap::Error> {
        let config = parse(&[
            "--grace",
            "500ms",
            "--join-timeout",
            "2m",
            "--keepalive",
            "5s",
        ])?;
        assert_eq!(config.grace, Duration::from_millis(500));
        assert_eq!(config.join_timeout, Duration::from_secs(120));
        assert_eq!(config.keepalive, Duration::from_secs(5));
        Ok(())
    }

    #[test]
    fn a_duration_without_a_unit_is_refused() {
        assert!(parse(&["--grace", "5"]).is_err());
    }

    #[test]
    fn a_zero_keepalive_is_refused() {
        assert!(parse(&["--keepalive", "0s"]).is_err());
    }

    #[test]
    fn the_retry_hint_is_well_inside_the_grace_period() -> Result<(), clap::Error> {
        assert_eq!(parse(&[])?.retry(), Duration::from_secs(1));
        assert_eq!(
            parse(&["--grace", "600ms"])?.retry(),
            Duration::from_millis(300)
        );
        Ok(())
    }
}
