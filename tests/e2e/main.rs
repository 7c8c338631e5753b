//! All end-to-end tests in one binary (one link on a 2-core machine).

mod access;
mod auth;
mod aws;
mod contract;
mod exact_numbers;
mod export;
mod faults;
mod helpers;
mod malformed;
mod races;
mod resources;
mod revisions;
mod routes;
mod schedules;
mod view_export;
mod views;
